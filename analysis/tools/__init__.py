"""Developer tools: ``analyze_bench`` (``mia-hpc bench analyze``: the analysis' cost against one
read of the logits) and ``synthetic_store`` (stores with a known answer for tests, demos and
benchmarks; ``mia-hpc synth-store``).
"""
