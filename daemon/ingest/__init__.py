"""Ingest: an inbox file becomes stored rows. The inbox pass (`inbox`), one file taken exactly once
(`ingestor`), its readers (`formats`), row checks and the train/eval split (`rows`, `splits`), file
names kept as bytes (`names`), and the row store (`store`, `segments`)."""
