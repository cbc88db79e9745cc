//! Seeded request generator: spec + seed → byte-identical requests.jsonl.
