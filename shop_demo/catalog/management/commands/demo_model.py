from django.core.management.base import BaseCommand

from clip_search.training import train
from shop_demo.catalog.training import demo_training_args


class Command(BaseCommand):
    help = "Train the demo's small CLIP on the drawn catalog (cached; same as clip_train with the demo args)."
    # It makes the model files that the model check looks for.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true")

    def handle(self, *args, **options):
        result = train(demo_training_args(), log=self.stdout.write, force=options["force"])
        self.stdout.write(f"MODEL = 'local-dir:{result.output}'  metrics {result.metrics}")
