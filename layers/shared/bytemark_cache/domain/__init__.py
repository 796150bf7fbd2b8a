"""Pure domain: passes, hashing, sync decisions, the day-pass rule and the effective status. No I/O."""
