"""The exit codes every policy-milter command shares (the README's "Exit codes" lists
what each command means by them)."""

EXIT_RULES = 1  # the rules have errors (check: or a fatal Postfix setting)
EXIT_USAGE = 2  # bad usage, or something the command was pointed at that will not do
EXIT_RUNTIME = 3  # the milter could not start or stopped on an error, a store failed
