"""Answers to the stakeholder questions, computed from a store."""
