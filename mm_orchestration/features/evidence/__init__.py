"""Signed evidence bundles: one archive per period (a quarter, a month) holding what an
auditor asks for (the residency reports, the restore drills with their RTO and RPO, the
audit trail and its hash chain's head) with a manifest of SHA-256s, signed with Ed25519 so
that anyone with the public key can check it offline; `mm-jobs evidence export/verify`,
downloaded by compliance from the console.
"""
