"""A small django-oscar 4.2 shop for tests: Oscar's documented settings plus clip_search, as a
shop would add it (README "django-oscar"). Run by scripts/test.sh in a pytest session of its own."""
