from django.core.management.base import BaseCommand, CommandError

from clip_search import searchlog
from clip_search.encoders import EncoderLoadError
from clip_search.training import TrainingArgs, train

CLICKS = "clip_search.training:clicked_catalog"


class Command(BaseCommand):
    help = (
        "Train or fine-tune a CLIP model contrastively on a catalog's (image, text) pairs and "
        "write it in open_clip's local-dir layout. Prints progress and held-out retrieval metrics."
    )
    # It makes the model files that the model check looks for.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument("--output", required=True, help="Folder to write the model to.")
        start = parser.add_mutually_exclusive_group(required=True)
        start.add_argument("--model", help="open_clip model to fine-tune, e.g. ViT-B-32.")
        start.add_argument("--config", help="JSON model config to train from scratch.")
        parser.add_argument("--pretrained", default="", help="Weights of --model (tag or file).")
        parser.add_argument("--source", default=TrainingArgs.source,
                            help="module:function returning a TrainingSet (default: registered models), or "
                                 "'clicks': the catalog plus what shoppers typed before clicking (the search "
                                 "log), the latest --held-out share of it kept to judge the model.")
        parser.add_argument("--held-out", type=float, default=0.2,
                            help="--source clicks: the latest share of the logged searches, by time, that "
                                 "judges the model instead of training it (default 0.2).")
        parser.add_argument("--steps", type=int, default=TrainingArgs.steps)
        parser.add_argument("--batch-size", type=int, default=TrainingArgs.batch_size)
        parser.add_argument("--lr", type=float, default=TrainingArgs.lr)
        parser.add_argument("--seed", type=int, default=TrainingArgs.seed)
        parser.add_argument("--threads", type=int, default=None)
        parser.add_argument("--min-precision", type=float, default=None,
                            help="Exit non-zero if held-out precision@5 ends below this.")
        parser.add_argument("--force", action="store_true", help="Retrain even if cached.")

    def handle(self, *args, **options):
        source = CLICKS if options["source"] == "clicks" else options["source"]
        # What the log holds is part of what identifies the run: new clicks, a new model.
        extra = {"held_out": options["held_out"], "log": searchlog.state()} if source == CLICKS else {}
        training_args = TrainingArgs(
            output=options["output"], source=source, model=options["model"] or "", extra=extra,
            pretrained=options["pretrained"], config=options["config"] or "",
            steps=options["steps"], batch_size=options["batch_size"], lr=options["lr"],
            seed=options["seed"], threads=options["threads"],
        )
        try:
            result = train(training_args, log=self.stdout.write, force=options["force"])
        except (EncoderLoadError, ValueError, OSError) as error:
            raise CommandError(str(error)) from error
        precision = result.metrics.get("precision@5")
        if options["min_precision"] is not None and (precision or 0.0) < options["min_precision"]:
            raise CommandError(f"held-out precision@5 {precision} < {options['min_precision']}")
