"""Drive bytes: one raw sparse file per drive, plain or LUKS1-encrypted, read and written at
offsets. Knows nothing of users, HTTP or the database."""
