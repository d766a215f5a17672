from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from clip_search import tagging
from clip_search.indexing import active_encoder
from clip_search.registry import RegistrationError, registry
from clip_search.routers import primary_reads


class Command(BaseCommand):
    help = ("Suggest tags for registered products from CLIP_SEARCH['TAGGING']['SETS'], scoring their stored "
            "image vectors (no image is read). Batched by primary key, a transaction per batch: safe to "
            "kill and rerun. Staff decisions are kept.")

    def add_arguments(self, parser):
        parser.add_argument("models", nargs="*", help="app_label.Model to tag (default: all registered).")
        parser.add_argument("--sets", help="Comma-separated label sets (default: all configured).")
        parser.add_argument("--missing", action="store_true",
                            help="Only products without a tag from the active encoder in these sets yet.")
        parser.add_argument("--batch-size", type=int, default=500)

    @primary_reads()
    def handle(self, *args, **options):
        sets = [name.strip() for name in (options["sets"] or "").split(",") if name.strip()] or None
        try:
            registrations = [registry.get(label) for label in options["models"]] or list(registry)
            chosen = tagging.label_sets(sets)
        except (RegistrationError, ImproperlyConfigured) as error:
            raise CommandError(str(error)) from error
        if not chosen:
            raise CommandError("No label sets: configure CLIP_SEARCH['TAGGING']['SETS'] first.")
        encoder = active_encoder()
        if encoder is None:
            raise CommandError("Nothing is embedded yet: run clip_reindex first.")
        self.stdout.write(f"Encoder: {encoder}; label sets: {', '.join(s.name for s in chosen)}")
        for registration in registrations:
            queryset = tagging.to_tag(registration, encoder, missing_only=options["missing"], sets=sets)
            bar = tqdm(total=queryset.count(), desc=registration.label, unit="obj", file=self.stderr,
                       dynamic_ncols=True, mininterval=0.5)
            try:
                tagged = tagging.tag_catalog(registration, encoder, batch_size=options["batch_size"],
                                             missing_only=options["missing"], sets=sets, progress=bar.update)
            finally:
                bar.close()
            orphans = 0 if options["missing"] else tagging.delete_orphans(registration)
            self.stdout.write(
                f"{registration.label}: {tagged.products} scored, {tagged.suggested} suggestions stored, "
                f"{tagged.withdrawn} withdrawn, {orphans} tags of deleted products removed, "
                f"{tagged.without_vectors} without an image vector")
