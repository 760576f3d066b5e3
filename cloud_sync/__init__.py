"""The wire between cabinet and backend: schemas, signatures, hash chain, uplink, ingest."""
