"""Demo data and training for aiaa-server's bundled DEMO models, kept beside (never inside) the server package.

- `aiaa_demo.phantoms`: synthetic abdominal CT phantoms with organ labels (the spleen demo, tests, benchmarks).
- `aiaa_demo.synthetic_shapes`: generic 3D shape scenes and simulated clicks (the interactive demos).
- `aiaa_demo.training` / `aiaa_demo.evaluation`: the shared loops of models/*/commands/train.py and evaluate.py.
"""
