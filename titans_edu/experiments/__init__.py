"""Long-context experiments: needle-in-a-haystack (RULER's S-NIAH), BABILong-style qa1-qa3, MQAR; the runner,
results and figures (notebooks 12-13)."""
