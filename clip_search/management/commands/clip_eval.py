import json
from datetime import datetime
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from clip_search import evaluation
from clip_search.models import EncoderModel
from clip_search.registry import RegistrationError, registry


class Command(BaseCommand):
    help = ("Evaluate search offline: recall@k, MRR and nDCG@10 of each leg and of the fusion, with "
            "95 % bootstrap intervals, on logged searches with clicks (the latest --held-out share, by "
            "time) or a judged JSONL file ({\"q\": ..., \"rel\": {pk: gain}} per line). --candidate compares "
            "another encoder (filled by clip_reindex --model) with the active one on the same queries.")

    def add_arguments(self, parser):
        source = parser.add_mutually_exclusive_group()
        source.add_argument("--judged", metavar="FILE", help="A JSONL file of judged queries.")
        source.add_argument("--held-out", type=float, default=0.2,
                            help="The latest share of the logged searches with clicks (default 0.2).")
        parser.add_argument("--since", help="Only searches from this date (YYYY-MM-DD).")
        parser.add_argument("--candidate", type=int, metavar="ENCODER_ID",
                            help="Also evaluate this encoder and compare it with the active one.")
        parser.add_argument("--model", help="The registered model to search (default: the only one).")
        parser.add_argument("--k", type=int, default=10, help="recall@k (default 10).")
        parser.add_argument("--json", metavar="FILE", help="Also write the figures as JSON.")

    def handle(self, *args, **options):
        try:
            registration = registry.get(options["model"]) if options["model"] else _only(registry)
        except RegistrationError as error:
            raise CommandError(str(error)) from error
        if options["judged"]:
            try:
                judged = evaluation.from_jsonl(options["judged"])
            except (OSError, ValueError) as error:
                raise CommandError(str(error)) from error
            where = options["judged"]
        else:
            since = options["since"] and timezone.make_aware(datetime.fromisoformat(options["since"]))
            _earlier, judged = evaluation.split_by_time(evaluation.from_log(since=since), options["held_out"])
            where = f"the latest {options['held_out']:.0%} of the logged searches with clicks"
        if not judged:
            raise CommandError(f"Nothing to evaluate in {where}.")
        queryset = registration.get_queryset()
        active = EncoderModel.objects.filter(is_active=True).first()
        if active is None:
            raise CommandError("No active encoder (clip_reindex makes the first one).")
        self.stdout.write(f"{len(judged)} judged queries from {where}.")
        results = [evaluation.evaluate(judged, queryset, encoder=active, k=options["k"])]
        if options["candidate"]:
            candidate = EncoderModel.objects.filter(pk=options["candidate"]).first()
            if candidate is None:
                raise CommandError(f"No encoder {options['candidate']}.")
            results.append(evaluation.evaluate(judged, queryset, encoder=candidate, k=options["k"]))
        for result in results:
            self.stdout.write("\n".join(result.table()))
        if len(results) == 2:
            comparison = evaluation.compare(*results)
            verdict = "better" if comparison.better else "not better"
            self.stdout.write(f"Candidate {verdict}: {comparison}")
        if options["json"]:
            Path(options["json"]).write_text(json.dumps(
                [{"encoder": r.encoder, "queries": r.queries, "means": {
                    leg: {name: r.mean(leg, name) for name in evaluation.MEASURES} for leg in r.values}}
                 for r in results], indent=2))


def _only(registrations):
    found = list(registrations)
    if len(found) != 1:
        raise RegistrationError(f"{len(found)} models are registered: name one with --model.")
    return found[0]
