"""The database router README "Operating it" shows a shop, verbatim below the marker line: the
replica test's settings use this very class, and the test checks that the README still shows it."""

# myshop/routers.py
class PrimaryReplicaRouter:
    """Reads from the standby, writes and migrations to the primary."""

    def db_for_read(self, model, **hints):
        return "replica"

    def db_for_write(self, model, **hints):
        return "default"

    def allow_relation(self, obj1, obj2, **hints):
        return True  # the same rows on both servers

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return db == "default"  # the standby replays the primary's schema
