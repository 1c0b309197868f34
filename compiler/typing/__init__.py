"""Type inference over IR modules with `Any` dims."""
from dynvm.compiler.typing.infer import infer_expr_type, infer_types, join_types  # noqa: F401
