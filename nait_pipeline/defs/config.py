"""Launchpad config classes made from the methods' Dagster-free parameter dataclasses, so a method's
parameters are declared once (in ``lib/methods``) and still show with defaults and docs in the UI."""

import ast
import dataclasses
import inspect
import textwrap
import typing

import dagster as dg
import pydantic


def _attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings written under each field of a dataclass (``name: type = default`` then a string)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant) and \
                isinstance(following.value.value, str):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def config_class(name: str, params: type, *more: type) -> type[dg.Config]:
    """A ``dg.Config`` with the fields, types, defaults and field docs of the dataclass ``params`` (and of
    ``more``, such as the runner's selection options; :func:`to_params` takes each back)."""
    fields = {}
    for cls in (params, *more):
        hints = typing.get_type_hints(cls)
        docs = _attribute_docs(cls)
        for item in dataclasses.fields(cls):
            if item.name in fields:
                raise ValueError(f"{name}: field {item.name!r} of {cls.__name__} is already a parameter")
            if item.default_factory is not dataclasses.MISSING:
                default = pydantic.Field(default_factory=item.default_factory, description=docs.get(item.name))
            else:
                default = pydantic.Field(default=item.default, description=docs.get(item.name))
            fields[item.name] = (hints[item.name], default)
    return pydantic.create_model(name, __base__=dg.Config, __doc__=params.__doc__, **fields)


def to_params(params: type, config: dg.Config):
    """The dataclass ``params`` filled from a config made by :func:`config_class`."""
    return params(**{f.name: getattr(config, f.name) for f in dataclasses.fields(params)})
