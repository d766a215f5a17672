from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

USERNAME = "admin"
PASSWORD = "admin"


class Command(BaseCommand):
    help = "Create (or reset) the demo's staff login and print it. Demo only."

    def handle(self, *args, **options):
        user, _ = get_user_model().objects.get_or_create(username=USERNAME)
        user.is_staff = user.is_superuser = True
        user.set_password(PASSWORD)
        user.save()
        self.stdout.write(self.style.SUCCESS(
            f"Demo admin: http://127.0.0.1:8000/admin/  user {USERNAME!r}  password {PASSWORD!r}"
        ))
