"""End-to-end tests: a real Postfix in front of a real policy-milter process."""
