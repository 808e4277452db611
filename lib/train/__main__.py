"""`python -m lib.train --run-dir RUN [--profile NAME] [--no-resume]` (also under `accelerate launch -m lib.train`)."""
from lib.train.grpo import main

main()
