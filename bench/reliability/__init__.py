"""`make reliability`: campaigns that attack a real platform (SIGKILL, hostile users, load, bad
input) and count the invariants they break. docs/reliability.md says what each promises."""
