from django.core.management.base import BaseCommand, CommandError

from clip_search.conf import clip_settings
from clip_search.encoders import EncoderLoadError, EncoderSpec, get_clip, graph_cache
from clip_search.indexing import active_encoder, spec_for


class Command(BaseCommand):
    help = ("Build the text tower's ONNX graph of the active encoder (or --model) and write it to "
            "TEXT_ENCODER['GRAPH_CACHE'], so that web processes with the onnx backend answer text "
            "queries without loading torch. Run it after a model change, before restarting them.")

    def add_arguments(self, parser):
        parser.add_argument("--model", help="Another encoder's model (default: the active one, else MODEL).")
        parser.add_argument("--pretrained", default="",
                            help="Weights of --model: a tag or a checkpoint file.")

    def handle(self, *args, **options):
        from clip_search.encoders.text import TextEncoder

        encoder = None if options["model"] else active_encoder()
        if options["model"]:
            spec = EncoderSpec.from_settings().with_weights(options["model"], options["pretrained"])
        else:
            spec = spec_for(encoder) if encoder else EncoderSpec.from_settings()
        text = clip_settings.TEXT_ENCODER
        if text["BACKEND"] != "onnx":
            self.stderr.write("Note: TEXT_ENCODER['BACKEND'] is not 'onnx': web processes will not read "
                              "this graph.")
        try:
            clip = get_clip(spec, towers="text")
        except EncoderLoadError as error:
            raise CommandError(str(error)) from error
        if encoder is not None and clip.fingerprint != encoder.fingerprint:
            raise CommandError(f"The weights of {encoder.name!r} changed since they were indexed "
                               "(clip_reindex first): no graph written.")
        built = TextEncoder(clip, backend="onnx", quantize=text["QUANTIZE"], threads=text["THREADS"],
                            cache_size=0, keep_graph=True)
        reason = (graph_cache.why_not_cached(built) if built.backend == "onnx"
                  else "the ONNX backend cannot rebuild this text tower")
        if reason:
            raise CommandError(f"{spec.model}: {reason}; web processes keep the torch path.")
        folder = graph_cache.store(spec, built)
        if folder is None:
            raise CommandError(f"Could not write to {graph_cache.cache_root()} (see the log).")
        precision = "int8" if built.quantized else "fp32"
        self.stdout.write(f"{spec.model} ({clip.fingerprint[:12]}, {precision}): {folder}")
