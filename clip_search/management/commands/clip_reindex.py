from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from clip_search import reindex
from clip_search.conf import clip_settings
from clip_search.encoders import EncoderLoadError, EncoderSpec
from clip_search.indexing import active_encoder, register_encoder
from clip_search.registry import RegistrationError, registry


class Command(BaseCommand):
    help = ("Embed registered products: all or --missing, inline in batches or --async on Celery "
            "workers. Safe to kill and rerun. Exits non-zero if any product failed.")

    def add_arguments(self, parser):
        parser.add_argument("models", nargs="*", help="app_label.Model to reindex (default: all registered).")
        parser.add_argument("--missing", action="store_true",
                            help="Only products with no row, or a pending, stale or failed one.")
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--async", dest="asynchronous", action="store_true",
                            help="Queue batches to Celery workers and follow their progress.")
        parser.add_argument("--force", action="store_true", help="Re-embed even unchanged images.")
        parser.add_argument("--model", help="Fill rows for another encoder (model switch).")
        parser.add_argument("--pretrained", default="", help="Weights of --model.")
        parser.add_argument("--activate", action="store_true",
                            help="Then make that encoder active, if every product is covered.")
        parser.add_argument("--timeout", type=float, default=None, help="--async: give up after N s.")

    def handle(self, *args, **options):
        try:
            registrations = [registry.get(label) for label in options["models"]] or list(registry)
            if options["model"]:
                spec = EncoderSpec.from_settings().with_weights(options["model"], options["pretrained"])
                encoder = register_encoder(spec)
            else:
                encoder = active_encoder() or register_encoder()
        except (RegistrationError, EncoderLoadError) as error:
            raise CommandError(str(error)) from error
        batch_size = options["batch_size"] or clip_settings.BATCH_SIZE
        self.stdout.write(f"Encoder: {encoder} ({'active' if encoder.is_active else 'inactive'})")
        failed = 0
        for registration in registrations:
            total = reindex.count_work(registration, encoder, missing_only=options["missing"])
            bar = tqdm(total=total, desc=registration.label, unit="obj", file=self.stderr,
                       dynamic_ncols=True, mininterval=0.5)
            run = reindex.reindex_async if options["asynchronous"] else reindex.reindex_inline
            extra = {"timeout": options["timeout"]} if options["asynchronous"] else {}
            try:
                summary = run(registration, encoder, missing_only=options["missing"], batch_size=batch_size,
                              force=options["force"], progress=bar.update, **extra)
            except (RuntimeError, TimeoutError) as error:
                raise CommandError(str(error)) from error
            finally:
                bar.close()
            counts = summary.counts
            self.stdout.write(
                f"{registration.label}: {total} to do — indexed {counts['indexed']}, "
                f"skipped {counts['skipped']}, flagged {counts['flagged']}, no image {counts['no_image']}, "
                f"failed {counts['failed']}")
            for pk, reason in sorted(summary.errors.items()):
                self.stdout.write(f"  failed {registration.label} pk={pk}: {reason}")
            failed += counts["failed"]
        if options["activate"]:
            try:
                reindex.activate(encoder, registrations)
            except ValueError as error:
                raise CommandError(str(error)) from error
            self.stdout.write(self.style.SUCCESS(f"Encoder {encoder} is now active."))
        if failed:
            raise CommandError(f"{failed} objects failed; their rows keep the reason (status 'error').")
