from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from clip_search import bulk, evaluation
from clip_search.calibration import calibrate
from clip_search.conf import clip_settings
from clip_search.encoders import EncoderLoadError, EncoderSpec
from clip_search.indexing import active_encoder, register_encoder
from clip_search.registry import RegistrationError, registry
from clip_search.routers import primary_reads


class Command(BaseCommand):
    help = ("Embed registered products: all, --missing, or --verify (compare every product with "
            "its rows and redo what differs), inline in batches or --async on Celery workers. "
            "Safe to kill and rerun. Exits non-zero if any product failed.")

    def add_arguments(self, parser):
        parser.add_argument("models", nargs="*", help="app_label.Model to reindex (default: all registered).")
        parser.add_argument("--missing", action="store_true",
                            help="Only products with no row, or a pending, stale or failed one.")
        parser.add_argument("--verify", action="store_true",
                            help="Recompute every product's sources (text, image names and sizes) and "
                                 "redo those that differ from their rows: what no signal reported.")
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--async", dest="asynchronous", action="store_true",
                            help="Queue batches to Celery workers and follow their progress.")
        parser.add_argument("--force", action="store_true", help="Re-embed even unchanged images.")
        parser.add_argument("--model", help="Fill rows for another encoder (model switch).")
        parser.add_argument("--pretrained", default="",
                            help="Weights of --model: a tag or a checkpoint file (not for local-dir: "
                                 "or hf-clip:).")
        activation = parser.add_mutually_exclusive_group()
        activation.add_argument("--activate", action="store_true",
                                help="Then make that encoder active, if every product is covered.")
        activation.add_argument("--activate-if-better", action="store_true",
                                help="Then make it active only if it beats the active encoder on held-out "
                                     "clicks (clip_eval's fused nDCG@10, beyond chance); refused otherwise, "
                                     "with the figures.")
        parser.add_argument("--held-out", type=float, default=0.2,
                            help="--activate-if-better: the latest share of the logged searches with clicks "
                                 "the models are judged on (default 0.2, as clip_train --source clicks).")
        parser.add_argument("--judged", metavar="FILE",
                            help="--activate-if-better: judge the models on this file of judged queries "
                                 "(clip_eval's JSONL) instead of held-out clicks, which favour the "
                                 "active model (they only judge what it showed).")
        parser.add_argument("--timeout", type=float, default=None, help="--async: give up after N s.")
        parser.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                            help="Do not measure the encoder's relevance floor afterwards (clip_calibrate "
                                 "does it alone; the sweep does it when the catalog changed).")

    @primary_reads()
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
            if options["verify"]:
                summary = self.verify(registration, encoder, batch_size, options)
            else:
                summary = self.reindex(registration, encoder, batch_size, options)
            for pk, reason in sorted(summary.errors.items()):
                self.stdout.write(f"  failed {registration.label} pk={pk}: {reason}")
            failed += summary.counts["failed"]
        if options["activate_if_better"] and not encoder.is_active:
            options["activate"] = self.judge(encoder, registrations, options["held_out"], options["judged"])
        if options["activate"]:
            try:
                bulk.activate(encoder, registrations)
            except ValueError as error:
                raise CommandError(str(error)) from error
            self.stdout.write(self.style.SUCCESS(f"Encoder {encoder} is now active."))
        if encoder.is_active or options["activate"]:
            encoder.refresh_from_db()
            self.stdout.write("Lexicon and calibration: " + bulk.finish(
                registrations, encoder, calibrate=options["calibrate"]))
        if failed:
            raise CommandError(f"{failed} objects failed; their rows keep the reason (status 'error').")

    def judge(self, encoder, registrations, held_out: float, judged_file: str | None) -> bool:
        """Calibrate the candidate as it would be once active, compare it with the active encoder
        on held-out clicks (or a judged file); True if it is better, CommandError with the
        figures if not."""
        calibrate(encoder)
        # Calibration and the writer store the floor, window and images per product with
        # queryset updates: the candidate is searched as the database now describes it.
        encoder.refresh_from_db()
        try:
            judged = evaluation.from_jsonl(judged_file) if judged_file else None
            comparison = evaluation.gate(encoder, registrations[0].get_queryset(), held_out=held_out,
                                         judged=judged)
        except (ValueError, OSError) as error:
            raise CommandError(f"Not activated: {error}") from error
        if not comparison.better:
            raise CommandError(f"Not activated, the candidate is not better: {comparison}")
        self.stdout.write(f"The candidate is better: {comparison}")
        return True

    def reindex(self, registration, encoder, batch_size: int, options: dict):
        total = bulk.count_work(registration, encoder, missing_only=options["missing"])
        bar = tqdm(total=total, desc=registration.label, unit="obj", file=self.stderr,
                   dynamic_ncols=True, mininterval=0.5)
        run = bulk.reindex_async if options["asynchronous"] else bulk.reindex_inline
        extra = {"timeout": options["timeout"]} if options["asynchronous"] else {}
        try:
            summary = run(registration, encoder, missing_only=options["missing"], batch_size=batch_size,
                          force=options["force"], progress=bar.update, **extra)
        except (RuntimeError, TimeoutError) as error:
            raise CommandError(str(error)) from error
        finally:
            bar.close()
        self.stdout.write(f"{registration.label}: {total} to do — {self.outcomes(summary)}")
        return summary

    def verify(self, registration, encoder, batch_size: int, options: dict):
        total = registration.model._default_manager.count()
        bar = tqdm(total=total, desc=f"verify {registration.label}", unit="obj", file=self.stderr,
                   dynamic_ncols=True, mininterval=0.5)
        try:
            report = bulk.verify(registration, encoder, batch_size=batch_size,
                                 asynchronous=options["asynchronous"], progress=bar.update,
                                 timeout=options["timeout"])
        except (RuntimeError, TimeoutError) as error:
            raise CommandError(str(error)) from error
        finally:
            bar.close()
        self.stdout.write(
            f"{registration.label}: verified {report.checked}, {report.drifted} differed from the index "
            f"({report.hidden} with an unscored image, hidden until scored), {report.orphans} rows of "
            f"deleted objects removed — {self.outcomes(report.summary)}")
        return report.summary

    @staticmethod
    def outcomes(summary) -> str:
        counts = summary.counts
        text = (f"indexed {counts['indexed']}, skipped {counts['skipped']}, flagged {counts['flagged']}, "
                f"no image {counts['no_image']}, failed {counts['failed']}")
        if counts["superseded"]:
            text += f", superseded by a newer change {counts['superseded']}"
        return text
