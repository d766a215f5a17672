import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from clip_search import synonyms


class Command(BaseCommand):
    help = ("Import or export the shop's synonym sets as a synonyms file (Solr's synonyms.txt: "
            "\"crimson, scarlet, red\" and \"rucksack => backpack\", one set per line).")

    def add_arguments(self, parser):
        action = parser.add_mutually_exclusive_group(required=True)
        action.add_argument("--import", dest="source", metavar="FILE",
                            help="Add the sets of FILE ('-': stdin).")
        action.add_argument("--export", dest="target", metavar="FILE",
                            help="Write the enabled sets to FILE ('-': stdout).")
        action.add_argument("--suggest", action="store_true",
                            help="Print the sets the search log suggests (words shoppers type that no "
                                 "product uses, and what they clicked), in the file format, to review "
                                 "and --import.")
        parser.add_argument("--replace", action="store_true", help="--import: instead of the existing sets.")
        parser.add_argument("--days", type=int, default=30, help="--suggest: the log's last N days (30).")

    def handle(self, *args, **options):
        if options["suggest"]:
            return self.suggest(options["days"])
        if options["target"]:
            text = synonyms.export_file()
            if options["target"] == "-":
                self.stdout.write(text, ending="")
            else:
                Path(options["target"]).write_text(text, encoding="utf-8")
            return
        try:
            text = (sys.stdin.read() if options["source"] == "-"
                    else Path(options["source"]).read_text(encoding="utf-8-sig"))
            added = synonyms.import_file(text, replace=options["replace"])
        except (OSError, UnicodeDecodeError, synonyms.SynonymFileError) as error:
            raise CommandError(f"{options['source']}: {error}") from error
        self.stdout.write(f"{added} synonym sets imported.")

    def suggest(self, days: int) -> None:
        from clip_search.analytics import Period
        from clip_search.click_synonyms import by_model

        suggested = by_model(Period.last(days))
        if suggested is None:
            raise CommandError("No active encoder: nothing is indexed yet.")
        for label, found in suggested.items():
            self.stdout.write(f"# {label}: {len(found)} suggested from the clicks of the last {days} days")
            for c in found:
                self.stdout.write(f"{c.line}  # {c.searches} searches, {c.sessions} shoppers, "
                                  f"{c.share:.0%} of clicks, {c.lift:.1f}x the catalog")
