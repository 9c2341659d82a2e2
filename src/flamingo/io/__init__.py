"""Safe input from untrusted sources: image decoding under limits and the one fetcher for remote images.

``flamingo.io.addresses`` (which addresses a fetch may contact), ``flamingo.io.images`` (bytes -> checked image)
and ``flamingo.io.fetch`` (http(s) GET with an overall deadline, a byte cap and checked redirects, and a bounded
thread pool to run fetches on). Used by the dataset builder, the server and the Python pipeline; only the
standard library and Pillow are imported here.
"""

from flamingo.io.addresses import AddressPolicy, address_refusal
from flamingo.io.fetch import Fetched, FetchError, FetchPolicy, FetchPool, fetch
from flamingo.io.images import ImageRejected, decode_rgb, inspect_image, sniff_format

__all__ = [
    "AddressPolicy",
    "FetchError",
    "FetchPolicy",
    "FetchPool",
    "Fetched",
    "ImageRejected",
    "address_refusal",
    "decode_rgb",
    "fetch",
    "inspect_image",
    "sniff_format",
]
