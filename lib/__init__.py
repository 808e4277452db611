"""creative-grpo: GRPO for open-ended ad copy with checklist-judge rewards."""
