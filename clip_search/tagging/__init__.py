"""Zero-shot product tagging from the shop's own label sets, reviewed by staff.

The shop names its label sets (``CLIP_SEARCH["TAGGING"]["SETS"]``: colours, categories,
patterns, materials) and clip_search suggests, per product, the labels its stored image
vectors match, each with the model's confidence (``suggest``, ``tag_catalog``; no image is read
again). Staff accept or reject suggestions in the admin or the API (``accept``, ``reject``);
accepted tags join the product's full-text document and can be facets
(``{"colour": {"tags": "colour"}}`` in ``CLIP_SEARCH_API["FACETS"]``).

- ``labels``: the sets, prompt-ensembled label vectors, scoring (``Tagger``);
- ``suggest``: product vectors, storing suggestions, whole-catalog runs;
- ``decisions``: staff decisions and the search document they feed;
- ``facets``: the facet over accepted tags;
- ``signals``: a deleted product's tags go with it; optional suggestions after embedding.
"""

from clip_search.tagging.decisions import (
    accept,
    document_parts,
    documents_parts,
    refresh_document,
    reject,
    tags_decided,
)
from clip_search.tagging.labels import LabelSet, Tagger, label_sets
from clip_search.tagging.suggest import Tagged, delete_orphans, suggest, tag_catalog, to_tag

__all__ = ["LabelSet", "Tagged", "Tagger", "accept", "delete_orphans", "document_parts", "documents_parts",
           "label_sets", "refresh_document", "reject", "suggest", "tag_catalog", "tags_decided", "to_tag"]
