from django.core.management.base import BaseCommand, CommandError

from shop_demo.catalog import shoppers


class Command(BaseCommand):
    help = ("Simulated shoppers search the demo shop through its API, click with a position bias, "
            "add to cart: the search log the learning loop reads (clip_eval, clip_train --source "
            "clicks). Then the rows are backdated over --days. Demo only; see "
            "shop_demo/catalog/shoppers.py.")

    def add_arguments(self, parser):
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000 (runserver, gunicorn)")
        where.add_argument("--in-process", action="store_true",
                           help="Django's test client in this process, on this database: no server")
        parser.add_argument("--shoppers", type=int, default=200)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--days", type=float, default=14.0,
                            help="the sessions are spread over this many days before now")
        parser.add_argument("--no-backdate", action="store_true",
                            help="leave the rows at the time the API wrote them")

    def handle(self, *args, **options):
        if options["shoppers"] < 1 or options["days"] <= 0:
            raise CommandError("--shoppers must be at least 1 and --days positive.")
        clients: list = []

        def shop_for(number: int) -> shoppers.Shop:
            agent = shoppers.user_agent(number)
            if options["in_process"]:
                shop = shoppers.InProcessShop(shoppers.shopper_address(number), agent)
            else:
                shop = shoppers.HttpShop(options["url"].rstrip("/"), agent)
            clients.append(shop)
            return shop

        try:
            searches = shoppers.simulate(shop_for, shoppers=options["shoppers"], seed=options["seed"],
                                         days=options["days"], log=self.stdout.write)
        except shoppers.ShopError as error:
            raise CommandError(str(error)) from error
        if not any(search.search_id for search in searches):
            self.stdout.write(self.style.WARNING(
                "The shop keeps no search log (SEARCH_LOG): nothing was recorded."))
        elif not options["no_backdate"]:
            found = shoppers.backdate(searches)
            logged = sum(bool(search.search_id) for search in searches)
            if found < logged:
                self.stdout.write(self.style.WARNING(
                    f"Backdated {found} of {logged} logged searches: the others are not in this "
                    f"command's database (is the server on another one?)."))
        waited = sum(shop.waited for shop in clients)
        throttled = f"; {waited:.0f} s waiting on the API's throttle" if waited else ""
        self.stdout.write(f"{options['shoppers']} shoppers (seed {options['seed']}) over "
                          f"{options['days']:g} days{throttled}:\n")
        self.stdout.write(shoppers.summary(searches))
