"""The read side for people: audit listings, sessions, filters and the HTML usage report."""
