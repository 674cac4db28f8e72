"""Stage 1, videos to faces: video I/O, face detection (behind :mod:`.detectors`), tubes, the index contract, batch inputs and the extractor (:mod:`.extract`)."""
