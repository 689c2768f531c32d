"""Command-line tools: the operator's admin tool and the users' client tools."""
