"""The measurement layer: speed, memory and load figures of the serving path (bench, concurrency, cpu_paths) and the
attribution command line with its faithfulness check (explain). Imports nothing above llara.serving.
"""
