"""Coverage-guided fuzzing of netoffload's parsers and decoders (atheris / libFuzzer).

``fuzz/targets.py`` holds the targets, ``python -m fuzz`` runs one (see
``fuzz/__main__.py``), ``scripts/fuzz.sh`` runs them all and
``tests/test_fuzz_smoke.py`` runs a short smoke of each in CI.
"""
