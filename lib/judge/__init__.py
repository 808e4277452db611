"""The judge: asks a rubric section's yes/no questions about texts and returns P(yes) per question.

- types: `Judgement`, `JudgeStats`, `SectionJudge` (all that lib.rewards sees of a judge)
- backends: the model that answers (vLLM in-process, transformers, an OpenAI-compatible server)
- engine: `JudgeEngine` (rubric sections -> prompts -> judgements; batching, prefix cache) and `build_judge`
- calibration: the judge against the hand-labelled calibration set (notebook 02): `from lib.judge import calibration as cal`
"""
from lib.judge.backends import JudgeError
from lib.judge.engine import JudgeEngine, build_judge
from lib.judge.types import Judgement, JudgeStats, SectionJudge

__all__ = ["JudgeEngine", "JudgeError", "JudgeStats", "Judgement", "SectionJudge", "build_judge"]
