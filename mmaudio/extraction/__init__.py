"""Feature extraction: rows -> encoder features in resumable shards -> one feature set.

    shards.py    shard planning, fingerprints, the work folder of finished shards
    settings.py  what a run is configured with and what it produced (clip length and rate: mmaudio.modes)
    pipeline.py  decoding workers -> batches on the device -> encoders -> shard files (every rank)
    merge.py     finished shards -> the feature set (rank 0)
    jobs.py      a dataset's extraction resolved from params, its encoders, what a stage reports

The stages stages/extract_audio.py and stages/extract_video.py call jobs.py.
"""
