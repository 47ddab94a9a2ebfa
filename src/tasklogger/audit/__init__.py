"""The tamper-evident audit trail: sealed task digests, the global checkpoint chain, signing, offline verification
and evidence bundles. docs/audit.md describes the formats and what each mode protects against.

Nothing here writes under the logs directory on its own: the store calls ``digests.seal_batch`` inside a commit and
``checkpoints.AuditLog.checkpoint`` owns the one append-only checkpoint file of the reserved directory.
"""
