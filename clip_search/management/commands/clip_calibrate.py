from django.core.management.base import BaseCommand, CommandError

from clip_search.calibration import calibrate
from clip_search.models import EncoderModel
from clip_search.routers import primary_reads


class Command(BaseCommand):
    help = ("Measure an encoder's relevance floor on its own index (clip_search.calibration): the "
            "similarity made-up words reach, and how far behind a query's best hit a product's own "
            "picture lands for its title. clip_reindex does it when it finishes, the sweep when the "
            "catalog changed by a quarter.")

    def add_arguments(self, parser):
        parser.add_argument("--encoder", type=int, help="EncoderModel id (default: the active one).")

    @primary_reads()
    def handle(self, *args, **options):
        encoders = EncoderModel.objects.all()
        encoder = (encoders.filter(pk=options["encoder"]) if options["encoder"]
                   else encoders.filter(is_active=True)).first()
        if encoder is None:
            raise CommandError("No such encoder (clip_reindex registers and activates the first one).")
        result = calibrate(encoder)
        if result is None:
            raise CommandError(f"{encoder} has no indexed products to calibrate on.")
        window = "not measured (no product has a title)" if result.window is None else f"{result.window:.3f}"
        self.stdout.write(
            f"{encoder}: noise floor {result.noise_floor:.3f} (cosine similarity, over "
            f"{result.noise_queries} made-up words), window {window} (over {result.title_queries} "
            f"titles), {result.objects} indexed objects.")
