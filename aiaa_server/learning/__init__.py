"""Learning from annotations: fine-tuning a served segmentation model on the datastore's `final` labels.

The job runs in its own process (`python -m aiaa_server.learning.job SPEC.json`, `job.py`): it reads a
`TrainSpec` (`spec.py`), carries each image and label through the model's own inference pre-transforms
(`data.py`), measures the serving weights' validation Dice, trains epoch by epoch (`trainer.py`), reports a
`TrainStatus` file as it goes, and writes a candidate MMAR when done. `split.py` fixes the validation images by
the hash of their ids. Deciding whether a candidate replaces the serving model is the caller's.
"""
