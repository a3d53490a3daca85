"""The descriptor pool of the generated modules: their own, so that another copy of the protocol
(``tritonclient``'s, KServe's: the same package ``inference``) can be imported in the same process."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
