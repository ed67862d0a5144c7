"""Perimeters, promotion gates, machine tokens and the audit log: who may change production.

The policy is a TOML file on ``main`` (:mod:`store.policy.parse`), read into frozen values
(:mod:`store.policy.model`). Machine tokens (:mod:`store.policy.tokens`) identify CI; the audit
log (:mod:`store.policy.audit`) is a hash chain of what changed production.
"""
