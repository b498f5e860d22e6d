"""Use cases of HS desk (one function each): take a Session, check the caller's role, return plain data."""
