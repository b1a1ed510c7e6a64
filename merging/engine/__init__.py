"""Running a merge: the merge itself, output ranks, and export to a PEFT adapter or a full model."""
