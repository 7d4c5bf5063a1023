"""Checks of terraform/ (issues 6, 13 and 17): every file parses, providers and modules are
pinned at their current majors, each cloud is split into a cluster stage and an app stage (no
root configures the Kubernetes providers from a cluster it creates itself), inputs are typed,
described and validated (the validations run in Terraform itself), data stores are private,
encrypted and backed up, Redis can be a cluster, no secret is written in the code, lock files
agree with the constraints, and checkov, terraform fmt, tflint and terraform-docs find nothing;
`terraform test` runs where Terraform can download the providers.

Nothing here needs a cloud account or the Terraform registry. `python-hcl2` reads the files as
Terraform does; checkov comes from `.venv-checkov` (`make checkov`), tflint and terraform-docs
from `.cache/terraform-tools` (`make terraform-tools`); `make test` builds all three.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = REPO / "terraform"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"

# Directories that hold Terraform configuration: each cloud's cluster stage and app stage (four
# roots, applied in that order) and the application module.
CLUSTER_STAGES = ("gke/cluster", "eks/cluster")
APP_STAGES = ("gke/app", "eks/app")
ROOTS = (*CLUSTER_STAGES, *APP_STAGES)
CONFIG_DIRS = (*ROOTS, "modules/flashsale")
EXAMPLES = ("small.tfvars", "spike.tfvars")

# The current major version of every provider and registry module (checked against each
# constraint's lower bound, so a downgrade or a jump to an unreviewed major fails).
PROVIDER_MAJORS = {
    "aws": "6",
    "google": "8",
    "helm": "3",
    "kubernetes": "3",
    "random": "3",
    "tls": "4",
    "time": "0",
    "cloudinit": "2",
}
MODULE_MAJORS = {
    "terraform-aws-modules/eks/aws": "21",
    "terraform-aws-modules/vpc/aws": "6",
}

# tflint and terraform-docs, built by scripts/terraform-tools/build.sh at the versions pinned in
# scripts/terraform-tools/<tool>/go.mod (`make terraform-tools`).
TOOLS = {
    "tflint": "github.com/terraform-linters/tflint",
    "terraform-docs": "github.com/terraform-docs/terraform-docs",
}

# Every check checkov may skip, with the reason; each skip is an inline `#checkov:skip=` comment
# next to the resource. A skip not listed here fails the test, and so does a listed one that no
# longer happens (so this list never outlives the code).
CHECKOV_SKIPS: dict[str, str] = {
    "CKV_TF_1": (
        "terraform-aws-modules/vpc and /eks come from the Terraform Registry, pinned by version "
        "in the module block; a commit hash only applies to git sources"
    ),
    "CKV_AWS_109": (
        "false positive on the KMS key policy: in a key policy Resource '*' is the key itself; "
        "the account statement is AWS's default key policy"
    ),
    "CKV_AWS_111": (
        "false positive on the KMS key policy (Resource '*' is the key itself); the CloudWatch "
        "Logs statement is limited by an encryption-context condition"
    ),
    "CKV_AWS_356": "a KMS key policy can only name its own key, as '*'",
    "CKV_GCP_6": (
        "Cloud SQL uses ssl_mode ENCRYPTED_ONLY (every connection must use TLS); checkov only "
        "accepts client certificates, which would need key files mounted into every pod, and "
        "the instance has no public IP"
    ),
    "CKV_GCP_69": (
        "the GKE cluster is created without a default node pool (no node_config); its only "
        "pool, google_container_node_pool.app, runs the GKE metadata server and passes the check"
    ),
}

SECRET_KEY = re.compile(
    r"(password|passwd|secret|token|auth_string|private_key|api_key|access_key|secret_key"
    r"|token_key|token_key_previous|credentials?)$"
)
# scheme://user:password@ with a written password (not a %s or ${...} filled in later)
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:(?![%$])[^/\s@]+@")
CONSTRAINT_WITH_UPPER_BOUND = re.compile(r"^(\d+\.\d+\.\d+|~>\s*\d+\.\d+(\.\d+)?)$")


# ---------------------------------------------------------------------------------------------
# Reading HCL (python-hcl2 8 keeps string literals in their quotes, and expressions in ${})
# ---------------------------------------------------------------------------------------------


def tf_files() -> list[Path]:
    return sorted(p for p in TERRAFORM.rglob("*.tf") if ".terraform" not in p.parts)


def hcl_files() -> list[Path]:
    extra = [*TERRAFORM.rglob("*.tftest.hcl"), *TERRAFORM.rglob("*.tfvars")]
    return tf_files() + sorted(p for p in extra if ".terraform" not in p.parts)


@functools.cache
def parse(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return hcl2.load(f)


def label(raw: str) -> str:
    return raw[1:-1] if raw.startswith('"') and raw.endswith('"') else raw


def literal(value: Any) -> str | None:
    """The text of a plain string literal ("abc"); None for expressions and templates."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        return None if "${" in inner else inner
    return None


def expression(value: Any) -> str:
    """The source text of an expression (without the ${ } python-hcl2 wraps it in)."""
    text = str(value)
    return text[2:-1] if text.startswith("${") and text.endswith("}") else text


def config(directory: str) -> dict[str, list[dict[str, Any]]]:
    """All top-level blocks of one configuration directory, merged by block type."""
    merged: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((TERRAFORM / directory).glob("*.tf")):
        for kind, blocks in parse(path).items():
            if kind.startswith("__"):
                continue
            merged.setdefault(kind, []).extend(blocks)
    return merged


def labelled(directory: str, kind: str) -> dict[str, dict[str, Any]]:
    """variable/output/module/provider blocks of a directory, by name."""
    found: dict[str, dict[str, Any]] = {}
    for block in config(directory).get(kind, []):
        for name, body in block.items():
            found[label(name)] = body
    return found


def resources(directory: str, kind: str = "resource") -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for block in config(directory).get(kind, []):
        for rtype, named in block.items():
            for name, body in named.items():
                found[(label(rtype), label(name))] = body
    return found


def resource(directory: str, rtype: str, name: str) -> dict[str, Any]:
    found = resources(directory)
    assert (rtype, name) in found, f"{directory}: no {rtype}.{name}"
    return found[(rtype, name)]


def only(block: Any) -> dict[str, Any]:
    """A nested block that appears once (python-hcl2 gives a list of one)."""
    assert isinstance(block, list) and len(block) == 1, block
    return block[0]


def variable_default(directory: str, name: str) -> Any:
    variables = labelled(directory, "variable")
    assert name in variables, f"{directory}: no variable {name}"
    return variables[name].get("default")


def walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """Every (path, key, value) attribute in a parsed file, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key.startswith("__"):
                continue
            here = f"{path}.{label(key)}" if path else label(key)
            yield here, label(key), value
            yield from walk(value, here)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from walk(item, f"{path}[{i}]")


def is_true(value: Any) -> bool:
    return value is True


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def satisfies(version: str, constraints: str) -> bool:
    """Whether a version meets a Terraform version constraint string ("~> 6.56",
    ">= 1.9.0, < 2.0.0", "3.1.0", ...)."""
    have = version_tuple(version)
    for raw in constraints.split(","):
        match = re.fullmatch(r"\s*(~>|>=|<=|!=|=|>|<)?\s*(\d+(?:\.\d+){0,2})\s*", raw)
        assert match, f"cannot read the constraint {raw!r}"
        op, text = match.group(1) or "=", match.group(2)
        want = version_tuple(text)
        padded = want + (0,) * (3 - len(want))
        if op == "~>":
            # ~> 6.56 allows >= 6.56.0, < 7.0.0; ~> 6.56.1 allows >= 6.56.1, < 6.57.0
            prefix = want[:-1] if len(want) > 1 else want
            if have < padded or have[: len(prefix)] != prefix:
                return False
        elif op in ("=", ">=", "<=", ">", "<", "!="):
            compare = {
                "=": have == padded,
                "!=": have != padded,
                ">=": have >= padded,
                "<=": have <= padded,
                ">": have > padded,
                "<": have < padded,
            }
            if not compare[op]:
                return False
    return True


# ---------------------------------------------------------------------------------------------
# Layout and parsing
# ---------------------------------------------------------------------------------------------


def example_files(root: str) -> list[Path]:
    return sorted((TERRAFORM / root / "examples").glob("*.tfvars"))


def test_layout_is_complete() -> None:
    for root in ROOTS:
        for name in ("versions.tf", "variables.tf", "outputs.tf", "README.md"):
            assert (TERRAFORM / root / name).is_file(), f"terraform/{root}/{name} is missing"
        for example in EXAMPLES:
            assert (TERRAFORM / root / "examples" / example).is_file()
        assert list((TERRAFORM / root / "tests").glob("*.tftest.hcl")), root
    for cloud in ("gke", "eks"):
        # The single-root layout is gone: nothing but the two stages at the cloud's top.
        assert not list((TERRAFORM / cloud).glob("*.tf")), f"terraform/{cloud} holds .tf files"
        assert {p.name for p in (TERRAFORM / cloud).iterdir()} == {"cluster", "app"}
    assert (TERRAFORM / "modules/flashsale/main.tf").is_file()
    assert (TERRAFORM / "modules/flashsale/README.md").is_file()
    assert (TERRAFORM / "README.md").is_file()


@pytest.mark.parametrize("path", hcl_files(), ids=rel)
def test_every_file_parses(path: Path) -> None:
    assert parse(path), f"{rel(path)} is empty"


# ---------------------------------------------------------------------------------------------
# Versions: Terraform, every provider and every module pinned, at current majors
# ---------------------------------------------------------------------------------------------


def required_providers(directory: str) -> dict[str, dict[str, Any]]:
    terraform = config(directory).get("terraform", [])
    assert len(terraform) == 1, f"{directory}: exactly one terraform block expected"
    providers = only(terraform[0].get("required_providers"))
    return {label(k): v for k, v in providers.items() if not k.startswith("__")}


@pytest.mark.parametrize("directory", CONFIG_DIRS)
def test_terraform_and_providers_are_pinned(directory: str) -> None:
    block = config(directory)["terraform"][0]
    required = literal(block.get("required_version"))
    assert required and ">=" in required and "<" in required.replace("<=", "<"), (
        f"{directory}: required_version needs a lower and an upper bound, got {required!r}"
    )
    # Never newer than the Terraform these machines run (1.11).
    assert satisfies("1.11.4", required), f"{directory}: {required} excludes Terraform 1.11"

    declared = required_providers(directory)
    assert declared, f"{directory}: no required_providers"
    for name, spec in declared.items():
        source = literal(spec.get("source"))
        version = literal(spec.get("version"))
        assert source and source.startswith("hashicorp/"), f"{directory}: {name} source {source}"
        assert version and CONSTRAINT_WITH_UPPER_BOUND.match(version), (
            f"{directory}: provider {name} must be pinned (x.y.z or ~> x.y), got {version!r}"
        )

    # Every provider a resource or data source of this directory uses is declared
    # (terraform_remote_state comes with Terraform itself).
    used = {rtype.split("_")[0] for rtype, _ in resources(directory)}
    used |= {rtype.split("_")[0] for rtype, _ in resources(directory, "data")}
    used |= {label(name) for block in config(directory).get("provider", []) for name in block}
    used -= {"terraform"}
    assert used <= set(declared), f"{directory}: undeclared providers {used - set(declared)}"


@pytest.mark.parametrize("directory", CONFIG_DIRS)
def test_providers_are_at_their_current_major(directory: str) -> None:
    for name, spec in required_providers(directory).items():
        version = literal(spec.get("version")) or ""
        lower = re.sub(r"^(~>|=|>=)\s*", "", version.split(",")[0]).strip()
        assert name in PROVIDER_MAJORS, f"{directory}: no current major recorded for {name}"
        major = PROVIDER_MAJORS[name]
        assert lower.split(".")[0] == major, f"{directory}: {name} {version}, expected {major}.x"
        if major == "0":  # 0.x: the minor is the major
            assert version.startswith("~> 0."), f"{directory}: {name} {version}"


@pytest.mark.parametrize("directory", CONFIG_DIRS)
def test_every_module_is_pinned(directory: str) -> None:
    for name, body in labelled(directory, "module").items():
        source = literal(body.get("source"))
        assert source, f"{directory}: module {name} has no literal source"
        if source.startswith(("./", "../")):
            assert "version" not in body, f"{directory}: local module {name} cannot have version"
            assert (TERRAFORM / directory / source / "main.tf").is_file(), source
            continue
        version = literal(body.get("version"))
        assert version and CONSTRAINT_WITH_UPPER_BOUND.match(version), (
            f"{directory}: module {name} must be pinned (x.y.z or ~> x.y), got {version!r}"
        )
        assert source in MODULE_MAJORS, f"{directory}: no current major recorded for {source}"
        lower = version.removeprefix("~>").strip()
        assert lower.split(".")[0] == MODULE_MAJORS[source], f"{directory}: {source} {version}"


def test_charts_are_pinned() -> None:
    for directory in CONFIG_DIRS:
        for (rtype, name), body in resources(directory).items():
            if rtype != "helm_release" or "repository" not in body:
                continue
            if literal(body["repository"]) is None:
                continue  # the FlashSale chart itself: from disk unless a repository is given
            version = expression(body.get("version"))
            assert version.startswith("var."), f"{directory}: helm_release.{name} unpinned"
            default = literal(variable_default(directory, version.removeprefix("var.")))
            assert default and re.fullmatch(r"\d+\.\d+\.\d+", default), (
                f"{directory}: helm_release.{name} chart version must default to x.y.z"
            )


def test_eks_module_uses_its_version_21_inputs() -> None:
    """terraform-aws-modules/eks 21 renamed its cluster_* inputs (docs/UPGRADE-21.0.md); the
    old names would make `terraform init`/`plan` fail with "Unsupported argument"."""
    eks = labelled("eks/cluster", "module")["eks"]
    renamed = {
        "cluster_name": "name",
        "cluster_version": "kubernetes_version",
        "cluster_endpoint_private_access": "endpoint_private_access",
        "cluster_endpoint_public_access": "endpoint_public_access",
        "cluster_endpoint_public_access_cidrs": "endpoint_public_access_cidrs",
        "cluster_enabled_log_types": "enabled_log_types",
        "cluster_addons": "addons",
    }
    for old, new in renamed.items():
        assert old not in eks, f"module eks: {old} is {new} since version 21"
        assert new in eks, f"module eks: {new} expected"


def test_helm_provider_3_syntax() -> None:
    """helm provider 3 (plugin framework): `kubernetes` and its `exec` are attributes, and
    `set`, `set_list`, `set_sensitive` are lists of objects, not blocks."""
    for directory in CONFIG_DIRS:
        for path in sorted((TERRAFORM / directory).glob("*.tf")):
            text = path.read_text()
            for block in ("set", "set_list", "set_sensitive", "registry", "experiments"):
                assert not re.search(rf"^\s*{block}\s*\{{", text, re.M), (
                    f"{rel(path)}: a `{block} {{` block is helm provider 2 syntax"
                )
            helm = re.search(r'^provider "helm" \{\n(.*?)^\}', text, re.M | re.S)
            if helm:
                assert re.search(r"^  kubernetes = \{", helm.group(1), re.M), rel(path)
                assert not re.search(r"^\s*(kubernetes|exec)\s*\{", helm.group(1), re.M), rel(path)


# ---------------------------------------------------------------------------------------------
# Two stages per cloud: the cluster, then the workloads on it
# ---------------------------------------------------------------------------------------------

CLUSTER_RESOURCES = {"google_container_cluster", "aws_eks_cluster"}
CLUSTER_MODULE_SOURCES = {"terraform-aws-modules/eks/aws"}
KUBERNETES_PROVIDERS = ("kubernetes", "helm")
REFERENCE = re.compile(r"\b(data\.)?([a-z][a-z0-9_]*)\.([a-z_][a-z0-9_-]*)")


def references(text: str, locals_: dict[str, str], seen: set[str] | None = None) -> set[str]:
    """Addresses (`type.name`, `data.type.name`, `module.name`) an expression refers to,
    through any local values it uses."""
    seen = set() if seen is None else seen
    found: set[str] = set()
    for data, first, second in REFERENCE.findall(text):
        if first == "local" and not data:
            if second not in seen and second in locals_:
                seen.add(second)
                found |= references(locals_[second], locals_, seen)
            continue
        if first in {"var", "each", "count", "path", "self", "terraform"} and not data:
            continue
        found.add(f"{'data.' if data else ''}{first}.{second}")
    return found


def provider_sources(directory: Path) -> dict[str, set[str]]:
    """For each kubernetes/helm provider block of a configuration directory, the managed
    resources and modules of that same directory its settings are computed from."""
    parsed = {}
    for path in sorted(directory.glob("*.tf")):
        with path.open(encoding="utf-8") as f:
            parsed[path] = hcl2.load(f)
    locals_: dict[str, str] = {}
    managed: set[str] = set()
    for blocks in parsed.values():
        for block in blocks.get("locals", []):
            locals_.update({k: json.dumps(v) for k, v in block.items() if not k.startswith("__")})
        for block in blocks.get("resource", []):
            for rtype, named in block.items():
                managed |= {f"{label(rtype)}.{label(n)}" for n in named}
        for block in blocks.get("module", []):
            managed |= {f"module.{label(n)}" for n in block}
    result: dict[str, set[str]] = {}
    for blocks in parsed.values():
        for block in blocks.get("provider", []):
            for name, body in block.items():
                if label(name) in KUBERNETES_PROVIDERS:
                    refs = references(json.dumps(body), locals_)
                    result[label(name)] = {r for r in refs if r in managed}
    return result


def test_provider_check_catches_the_single_root_layout(tmp_path: Path) -> None:
    """The check below is not vacuous: the layout issue 17 replaced (the cluster and the
    providers configured from it in one root, through a local) is caught."""
    (tmp_path / "main.tf").write_text(
        'resource "google_container_cluster" "this" {\n  name = "x"\n}\n'
        "locals {\n"
        '  host = "https://${google_container_cluster.this.endpoint}"\n'
        "}\n"
        'provider "helm" {\n'
        "  kubernetes = {\n"
        "    host = local.host\n"
        "  }\n"
        "}\n"
        'data "google_client_config" "current" {}\n'
        'provider "kubernetes" {\n'
        "  token = data.google_client_config.current.access_token\n"
        "}\n"
    )
    found = provider_sources(tmp_path)
    assert found == {"helm": {"google_container_cluster.this"}, "kubernetes": set()}


@pytest.mark.parametrize("directory", CONFIG_DIRS)
def test_no_root_configures_kubernetes_providers_from_its_own_resources(directory: str) -> None:
    for provider, sources in provider_sources(TERRAFORM / directory).items():
        assert not sources, (
            f"{directory}: provider {provider} is configured from {sorted(sources)}, created in "
            "the same root: a plan before that exists fails (configure it in the app stage)"
        )


@pytest.mark.parametrize("stage", CLUSTER_STAGES)
def test_cluster_stage_creates_the_cluster_and_no_workloads(stage: str) -> None:
    managed = {rtype for rtype, _ in resources(stage)}
    modules = {literal(b.get("source")) for b in labelled(stage, "module").values()}
    assert managed & CLUSTER_RESOURCES or modules & CLUSTER_MODULE_SOURCES, stage
    assert not {t for t in managed if t.startswith(("kubernetes_", "helm_"))}, stage
    assert not set(required_providers(stage)) & set(KUBERNETES_PROVIDERS), stage
    providers = {label(n) for b in config(stage).get("provider", []) for n in b}
    assert not providers & set(KUBERNETES_PROVIDERS), stage
    assert not any(s and s.endswith("modules/flashsale") for s in modules), stage
    # What the app stage reads from it.
    outputs = labelled(stage, "output")
    for name in ("cluster_name", "region", "redis_url", "database_url", "data_store_cidrs"):
        assert name in outputs, f"{stage}: output {name} missing"
    for name in ("redis_url", "database_url"):
        assert outputs[name].get("sensitive") is True, f"{stage}: output {name} not sensitive"


@pytest.mark.parametrize("stage", APP_STAGES)
def test_app_stage_reads_the_cluster_stage_and_creates_no_cluster(stage: str) -> None:
    managed = {rtype for rtype, _ in resources(stage)}
    modules = {literal(b.get("source")) for b in labelled(stage, "module").values()}
    assert not managed & CLUSTER_RESOURCES and not modules & CLUSTER_MODULE_SOURCES, stage
    assert labelled(stage, "module")["flashsale"]["source"] == '"../../modules/flashsale"'
    remote = resources(stage, "data")[("terraform_remote_state", "cluster")]
    assert expression(remote["backend"]) == "var.cluster_state_backend"
    assert expression(remote["config"]) == "var.cluster_state_config"
    # The providers talk to the running cluster, found by the name the cluster stage output.
    cluster_data = {"gke/app": "google_container_cluster", "eks/app": "aws_eks_cluster"}[stage]
    found = resources(stage, "data")[(cluster_data, "this")]
    assert "local.cluster.cluster_name" in json.dumps(found)
    providers = {label(n) for b in config(stage).get("provider", []) for n in b}
    assert set(KUBERNETES_PROVIDERS) <= providers, stage
    # Every output of the cluster stage the app stage reads exists.
    cluster_outputs = set(labelled(stage.replace("/app", "/cluster"), "output"))
    text = "".join(p.read_text() for p in (TERRAFORM / stage).glob("*.tf"))
    read = set(re.findall(r"\blocal\.cluster\.([a-z_]+)", text))
    assert read and read <= cluster_outputs, (
        f"{stage}: reads missing outputs {read - cluster_outputs}"
    )


# ---------------------------------------------------------------------------------------------
# Inputs and outputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", CONFIG_DIRS)
def test_every_variable_has_type_and_description(directory: str) -> None:
    variables = labelled(directory, "variable")
    assert variables
    for name, body in variables.items():
        assert body.get("type"), f"{directory}: variable {name} has no type"
        description = literal(body.get("description"))
        assert description and len(description) > 10, f"{directory}: variable {name} description"


@pytest.mark.parametrize("directory", CONFIG_DIRS)
def test_every_output_has_description(directory: str) -> None:
    outputs = labelled(directory, "output")
    assert outputs
    for name, body in outputs.items():
        assert literal(body.get("description")), f"{directory}: output {name} has no description"


@pytest.mark.parametrize("directory", CONFIG_DIRS)
def test_secret_inputs_are_sensitive_without_defaults(directory: str) -> None:
    for name, body in labelled(directory, "variable").items():
        if not re.search(r"(password|token|_key|_url)(_previous)?$", name):
            continue
        assert is_true(body.get("sensitive")), f"{directory}: variable {name} must be sensitive"
        default = body.get("default")
        assert default is None or literal(default) == "", (
            f"{directory}: sensitive variable {name} must default to null or empty"
        )


@pytest.mark.parametrize("directory", CONFIG_DIRS)
def test_variables_validate_what_they_can(directory: str) -> None:
    """Names, CIDR blocks, sizes and counts are checked before any API call."""
    variables = labelled(directory, "variable")
    with_validation = [n for n, b in variables.items() if b.get("validation")]
    assert len(with_validation) >= len(variables) // 2, (
        f"{directory}: only {len(with_validation)} of {len(variables)} variables validate"
    )
    for name, body in variables.items():
        if body.get("type") == "bool":
            continue
        if re.search(r"(cidr|_count$|_replicas$|_shards$|retention|namespace$|topology$)", name):
            assert body.get("validation"), f"{directory}: variable {name} needs a validation"


@pytest.mark.parametrize("stage", CLUSTER_STAGES)
def test_cluster_stage_tells_how_to_connect(stage: str) -> None:
    outputs = labelled(stage, "output")
    commands = " ".join(str(o.get("value")) for o in outputs.values())
    expected = {
        "gke/cluster": "gcloud container clusters get-credentials",
        "eks/cluster": "aws eks update-kubeconfig",
    }[stage]
    assert expected in commands


@pytest.mark.parametrize("stage", APP_STAGES)
def test_app_stage_tells_where_shoppers_go(stage: str) -> None:
    outputs = labelled(stage, "output")
    assert "ingress_address" in outputs and "admin_token" in outputs
    assert outputs["admin_token"].get("sensitive") is True


@pytest.mark.parametrize(
    ("root", "example"),
    [(root, path.name) for root in ROOTS for path in example_files(root)],
)
def test_examples_set_only_known_variables(root: str, example: str) -> None:
    variables = labelled(root, "variable")
    values = {k: v for k, v in parse(TERRAFORM / root / "examples" / example).items()}
    values = {k: v for k, v in values.items() if not k.startswith("__")}
    unknown = set(values) - set(variables)
    assert not unknown, f"{root}/examples/{example}: unknown variables {unknown}"
    required = {n for n, b in variables.items() if "default" not in b}
    assert required <= set(values), f"{root}/examples/{example}: missing {required - set(values)}"
    if "node_max_count" in values:
        assert values["node_max_count"] >= values["node_min_count"]


@pytest.mark.parametrize("root", ROOTS)
def test_spike_example_is_larger_than_small(root: str) -> None:
    small = parse(TERRAFORM / root / "examples" / "small.tfvars")
    spike = parse(TERRAFORM / root / "examples" / "spike.tfvars")
    keys = {
        "cluster": ("node_max_count", "node_min_count"),
        "app": ("api_max_replicas", "api_min_replicas"),
    }[root.split("/")[1]]
    for key in keys:
        assert spike[key] > small[key], f"{root}: spike {key} must exceed small"


# ---------------------------------------------------------------------------------------------
# Validations, run by Terraform itself on each configuration's variables.tf: a configuration
# made of variable blocks alone needs no provider, so `terraform init` and `plan` run offline.
# ---------------------------------------------------------------------------------------------

# (root, extra values over examples/small.tfvars, the variable that must be refused or None)
VALIDATION_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("gke/cluster", {}, None),
    ("gke/cluster", {"redis_topology": "cluster"}, None),
    ("gke/cluster", {"redis_topology": "sentinel"}, "redis_topology"),
    (
        "gke/cluster",
        {"redis_topology": "cluster", "redis_cluster_replica_count": 0},
        "redis_cluster_replica_count",
    ),
    ("gke/cluster", {"redis_cluster_shard_count": 251}, "redis_cluster_shard_count"),
    ("gke/cluster", {"redis_cluster_shard_count": 2.5}, "redis_cluster_shard_count"),
    ("gke/cluster", {"redis_cluster_node_type": "REDIS_HUGE"}, "redis_cluster_node_type"),
    (
        "gke/cluster",
        {"redis_cluster_psc_subnet_cidr": "10.10.4.0/26"},
        "redis_cluster_psc_subnet_cidr",
    ),
    (
        "gke/cluster",
        {"redis_cluster_psc_subnet_cidr": "10.0.0.0/8"},
        "redis_cluster_psc_subnet_cidr",
    ),
    (
        "gke/cluster",
        {"redis_cluster_psc_subnet_cidr": "10.10.16.0/30"},
        "redis_cluster_psc_subnet_cidr",
    ),
    ("gke/cluster", {"redis_cluster_psc_subnet_cidr": "10.30.0.0/28"}, None),
    ("gke/cluster", {"node_min_count": 10, "node_max_count": 5}, "node_max_count"),
    (
        "gke/cluster",
        {"master_authorized_networks": [{"cidr_block": "0.0.0.0/0", "display_name": "all"}]},
        "master_authorized_networks",
    ),
    ("eks/cluster", {}, None),
    ("eks/cluster", {"redis_topology": "cluster", "redis_shards": 8, "redis_replicas": 2}, None),
    ("eks/cluster", {"redis_topology": "sentinel"}, "redis_topology"),
    (
        "eks/cluster",
        {"redis_topology": "cluster", "redis_shards": 200, "redis_replicas": 3},
        "redis_shards",
    ),
    # The node limit only applies in cluster mode (cross-variable validation).
    ("eks/cluster", {"redis_shards": 200, "redis_replicas": 3}, None),
    ("eks/cluster", {"redis_shards": 0}, "redis_shards"),
    ("eks/cluster", {"redis_replicas": 0}, "redis_replicas"),
    ("eks/cluster", {"db_backup_retention_days": 3}, "db_backup_retention_days"),
    (
        "eks/cluster",
        {"cluster_endpoint_public_access_cidrs": ["0.0.0.0/0"]},
        "cluster_endpoint_public_access_cidrs",
    ),
    ("eks/cluster", {"availability_zones": ["eu-west-1a", "eu-west-1b"]}, "availability_zones"),
    ("gke/app", {}, None),
    (
        "gke/app",
        {
            "cluster_state_backend": "gcs",
            "cluster_state_config": {"bucket": "b", "prefix": "flashsale/gke/cluster"},
        },
        None,
    ),
    (
        "gke/app",
        {"cluster_state_backend": "gcs", "cluster_state_config": {"path": "x"}},
        "cluster_state_config",
    ),
    ("gke/app", {"cluster_state_backend": "consul"}, "cluster_state_backend"),
    ("gke/app", {"token_key": "too-short"}, "token_key"),
    ("gke/app", {"api_min_replicas": 5, "api_max_replicas": 4}, "api_max_replicas"),
    ("eks/app", {}, None),
    (
        "eks/app",
        {
            "cluster_state_backend": "s3",
            "cluster_state_config": {"bucket": "b", "key": "k", "region": "us-east-1"},
        },
        None,
    ),
    (
        "eks/app",
        {"cluster_state_backend": "s3", "cluster_state_config": {"bucket": "b"}},
        "cluster_state_config",
    ),
    (
        "eks/app",
        {"cluster_autoscaler_chart_version": "~> 9.46"},
        "cluster_autoscaler_chart_version",
    ),
    ("modules/flashsale", {}, None),
    (
        "modules/flashsale",
        {"redis_cluster": True, "redis_node_port_range": {"from": 11000, "to": 13047}},
        None,
    ),
    (
        "modules/flashsale",
        {"redis_node_port_range": {"from": 11000, "to": 13047}},
        "redis_node_port_range",
    ),
    (
        "modules/flashsale",
        {"redis_cluster": True, "redis_node_port_range": {"from": 13047, "to": 11000}},
        "redis_node_port_range",
    ),
    ("modules/flashsale", {"redis_url": "http://redis:6379"}, "redis_url"),
]

# The module has no examples; these are its required inputs.
MODULE_BASE = {
    "redis_url": "rediss://:test-only@redis.internal:6379/0",
    "database_url": "postgresql://flashsale:test-only@db.internal:5432/flashsale",
}


def terraform_env() -> dict[str, str]:
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1"}
    config_file = env.get("TF_CLI_CONFIG_FILE")
    if config_file and not Path(config_file).exists():
        env.pop("TF_CLI_CONFIG_FILE")  # only a warning, but it would clutter every message
    return env


@pytest.fixture(scope="module")
def variables_only(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A directory per configuration holding only its variables.tf, `terraform init`ed."""
    binary = terraform_binary()
    made: dict[str, Path] = {}

    def prepare(directory: str) -> Path:
        if directory not in made:
            work = tmp_path_factory.mktemp(directory.replace("/", "-"))
            shutil.copy(TERRAFORM / directory / "variables.tf", work / "variables.tf")
            init = subprocess.run(
                [binary, "init", "-backend=false", "-input=false", "-no-color"],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=work,
                env=terraform_env(),
            )
            assert init.returncode == 0, init.stdout + init.stderr
            made[directory] = work
        return made[directory]

    return prepare


def variable_at_line(path: Path, line: int) -> str:
    """The variable whose block holds the given line of a variables.tf."""
    owner = ""
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        match = re.match(r'variable "([^"]+)" \{', text)
        if match:
            owner = match.group(1)
        if number == line:
            return owner
    raise AssertionError(f"{rel(path)} has no line {line}")


@pytest.mark.parametrize(
    ("root", "values", "refused"),
    VALIDATION_CASES,
    ids=[f"{r}:{','.join(v) or 'example'}:{x or 'ok'}" for r, v, x in VALIDATION_CASES],
)
def test_validations_in_terraform(
    root: str, values: dict[str, Any], refused: str | None, variables_only: Any
) -> None:
    work = variables_only(root)
    args = []
    if root == "modules/flashsale":
        values = {**MODULE_BASE, **values}
    else:
        args.append(f"-var-file={TERRAFORM / root / 'examples' / 'small.tfvars'}")
    case = work / "case.tfvars.json"
    case.write_text(json.dumps(values))
    result = subprocess.run(
        [
            terraform_binary(),
            "plan",
            "-input=false",
            "-no-color",
            "-lock=false",
            *args,
            f"-var-file={case}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=work,
        env=terraform_env(),
    )
    output = result.stdout + result.stderr
    if refused is None:
        assert result.returncode == 0, output
    else:
        assert result.returncode != 0, f"{refused} was accepted: {values}"
        assert "Invalid value for variable" in output, output
        rules = [int(n) for n in re.findall(r"validation rule at variables\.tf:(\d+)", output)]
        assert rules, output
        owners = {variable_at_line(TERRAFORM / root / "variables.tf", line) for line in rules}
        assert owners == {refused}, f"refused by the rules of {owners}, not {refused}: {output}"


@pytest.mark.parametrize(
    ("root", "example"),
    [(root, path.name) for root in ROOTS for path in example_files(root)],
)
def test_examples_pass_the_validations(root: str, example: str, variables_only: Any) -> None:
    work = variables_only(root)
    result = subprocess.run(
        [
            terraform_binary(),
            "plan",
            "-input=false",
            "-no-color",
            "-lock=false",
            f"-var-file={TERRAFORM / root / 'examples' / example}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=work,
        env=terraform_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# Data stores: private, encrypted, authenticated, backed up; Redis single-primary or cluster
# ---------------------------------------------------------------------------------------------


def test_elasticache_is_encrypted_authenticated_and_multi_az() -> None:
    for name in ("this", "cluster"):
        group = resource("eks/cluster", "aws_elasticache_replication_group", name)
        assert is_true(group["at_rest_encryption_enabled"])
        assert is_true(group["transit_encryption_enabled"])
        assert expression(group["auth_token"]) == "random_password.redis_auth.result"
        assert literal(group["auth_token_update_strategy"]) == "ROTATE"  # required by aws 6
        assert is_true(group["automatic_failover_enabled"])
        assert is_true(group["multi_az_enabled"])
        assert "kms_key_id" in group
        assert "elasticache_subnet_group_name" in expression(group["subnet_group_name"])
    single = resource("eks/cluster", "aws_elasticache_replication_group", "this")
    assert "1 + var.redis_replicas" in expression(single["num_cache_clusters"])

    sg = resource("eks/cluster", "aws_security_group", "redis")
    for rule in sg["ingress"]:
        assert "cidr_blocks" not in rule and "ipv6_cidr_blocks" not in rule, rule
        assert rule["security_groups"] == ["${module.eks.node_security_group_id}"]
        assert (rule["from_port"], rule["to_port"]) == (6379, 6379)


def test_redis_topology_switches_between_single_primary_and_cluster() -> None:
    for stage in CLUSTER_STAGES:
        variable = labelled(stage, "variable")["redis_topology"]
        assert literal(variable["default"]) == "single-primary", stage
        condition = expression(only(variable["validation"])["condition"])
        assert '["single-primary", "cluster"]' in condition, stage
        assert "redis_topology" in labelled(stage, "output")
    main = "".join(p.read_text() for p in (TERRAFORM / "eks/cluster").glob("*.tf"))
    assert 'redis_cluster = var.redis_topology == "cluster"' in main
    single = resource("eks/cluster", "aws_elasticache_replication_group", "this")
    cluster = resource("eks/cluster", "aws_elasticache_replication_group", "cluster")
    assert expression(single["count"]) == "local.redis_cluster ? 0 : 1"
    assert expression(cluster["count"]) == "local.redis_cluster ? 1 : 0"
    assert literal(cluster["cluster_mode"]) == "enabled"
    assert expression(cluster["num_node_groups"]) == "var.redis_shards"
    assert expression(cluster["replicas_per_node_group"]) == "var.redis_replicas"
    assert "num_cache_clusters" not in cluster
    params = resource("eks/cluster", "aws_elasticache_parameter_group", "redis")
    dynamic = {label(k): v for k, v in only(params["dynamic"]).items()}["parameter"]
    assert "local.redis_cluster" in expression(dynamic["for_each"])
    assert literal(dynamic["content"][0]["name"]) == "cluster-enabled"

    instance = resource("gke/cluster", "google_redis_instance", "this")
    memorystore = resource("gke/cluster", "google_redis_cluster", "this")
    assert expression(instance["count"]) == "local.redis_cluster ? 0 : 1"
    assert expression(memorystore["count"]) == "local.redis_cluster ? 1 : 0"
    # An install made before redis_topology keeps its instance and group.
    for stage, address in (
        ("gke/cluster", "google_redis_instance.this"),
        ("eks/cluster", "aws_elasticache_replication_group.this"),
    ):
        moved = [only(b) if isinstance(b, list) else b for b in config(stage).get("moved", [])]
        assert any(
            expression(m["from"]) == address and expression(m["to"]) == f"{address}[0]"
            for m in moved
        ), f"{stage}: moved block for {address} missing"


def test_memorystore_cluster_is_private_replicated_and_encrypted_in_transit() -> None:
    cluster = resource("gke/cluster", "google_redis_cluster", "this")
    assert literal(cluster["transit_encryption_mode"]) == (
        "TRANSIT_ENCRYPTION_MODE_SERVER_AUTHENTICATION"
    )
    assert expression(cluster["shard_count"]) == "var.redis_cluster_shard_count"
    assert expression(cluster["replica_count"]) == "var.redis_cluster_replica_count"
    assert literal(only(cluster["zone_distribution_config"])["mode"]) == "MULTI_ZONE"
    assert expression(only(cluster["psc_configs"])["network"]) == "google_compute_network.this.id"
    assert "google_network_connectivity_service_connection_policy.redis" in str(
        cluster["depends_on"]
    )
    policy = resource(
        "gke/cluster", "google_network_connectivity_service_connection_policy", "redis"
    )
    assert literal(policy["service_class"]) == "gcp-memorystore-redis"
    assert "google_compute_subnetwork.redis_psc" in str(only(policy["psc_config"])["subnetworks"])
    apis = str(next(b["apis"] for b in config("gke/cluster")["locals"] if "apis" in b))
    assert "networkconnectivity.googleapis.com" in apis


def test_redis_url_uses_tls_and_the_auth_token() -> None:
    eks = (TERRAFORM / "eks/cluster" / "redis.tf").read_text()
    assert '"rediss://:%s@%s:%d/0"' in eks
    assert "urlencode(random_password.redis_auth.result)" in eks
    assert "configuration_endpoint_address" in eks  # cluster mode: the configuration endpoint
    gke = (TERRAFORM / "gke/cluster" / "redis.tf").read_text()
    assert '"rediss://:%s@%s:%d/0?ssl_cert_reqs=required' in gke
    assert "urlencode(google_redis_instance.this[0].auth_string)" in gke
    assert '"rediss://%s:%d/0?ssl_cert_reqs=required' in gke  # the cluster: TLS, its own CA
    assert "managed_server_ca[0].ca_certs" in gke
    assert "discovery_endpoints[0].address" in gke


def test_rds_is_encrypted_private_multi_az_and_backed_up() -> None:
    db = resource("eks/cluster", "aws_db_instance", "this")
    assert is_true(db["storage_encrypted"])
    assert db["publicly_accessible"] is False
    assert is_true(db["multi_az"])
    assert expression(db["backup_retention_period"]) == "var.db_backup_retention_days"
    assert variable_default("eks/cluster", "db_backup_retention_days") >= 7
    validation = only(labelled("eks/cluster", "variable")["db_backup_retention_days"]["validation"])
    assert ">= 7" in expression(validation["condition"])
    assert expression(db["deletion_protection"]) == "var.db_deletion_protection"
    assert variable_default("eks/cluster", "db_deletion_protection") is True
    assert db["skip_final_snapshot"] is False
    assert (
        expression(db.get("password")) == "random_password.db.result"
        or db.get("manage_master_user_password") is True
    )
    assert "database_subnet_group_name" in expression(db["db_subnet_group_name"])

    params = resource("eks/cluster", "aws_db_parameter_group", "this")["parameter"]
    assert any(literal(p["name"]) == "rds.force_ssl" and literal(p["value"]) == "1" for p in params)

    sg = resource("eks/cluster", "aws_security_group", "db")
    for rule in sg["ingress"]:
        assert "cidr_blocks" not in rule, rule
        assert rule["security_groups"] == ["${module.eks.node_security_group_id}"]


def test_memorystore_is_ha_authenticated_and_encrypted_in_transit() -> None:
    redis = resource("gke/cluster", "google_redis_instance", "this")
    assert literal(redis["tier"]) == "STANDARD_HA"
    assert is_true(redis["auth_enabled"])
    assert literal(redis["transit_encryption_mode"]) == "SERVER_AUTHENTICATION"
    assert literal(redis["connect_mode"]) == "PRIVATE_SERVICE_ACCESS"


def test_cloud_sql_is_private_regional_and_backed_up() -> None:
    sql = resource("gke/cluster", "google_sql_database_instance", "this")
    assert expression(sql["deletion_protection"]) == "var.db_deletion_protection"
    assert variable_default("gke/cluster", "db_deletion_protection") is True
    settings = only(sql["settings"])
    assert literal(settings["availability_type"]) == "REGIONAL"
    ip = only(settings["ip_configuration"])
    assert ip["ipv4_enabled"] is False
    assert "authorized_networks" not in ip
    assert literal(ip["ssl_mode"]) == "ENCRYPTED_ONLY"
    assert "private_network" in ip
    backups = only(settings["backup_configuration"])
    assert is_true(backups["enabled"])
    assert is_true(backups["point_in_time_recovery_enabled"])
    user = resource("gke/cluster", "google_sql_user", "flashsale")
    assert expression(user["password"]) == "random_password.db.result"


def test_gke_cluster_is_private_and_hardened() -> None:
    cluster = resource("gke/cluster", "google_container_cluster", "this")
    assert expression(cluster["location"]) == "var.region"  # regional
    private = only(cluster["private_cluster_config"])
    assert is_true(private["enable_private_nodes"])
    assert "svc.id.goog" in str(only(cluster["workload_identity_config"])["workload_pool"])
    assert expression(only(cluster["release_channel"])["channel"]) == "var.release_channel"
    assert is_true(cluster["enable_shielded_nodes"])
    assert is_true(only(cluster["network_policy"])["enabled"])
    assert cluster["master_authorized_networks_config"]
    assert cluster["enable_legacy_abac"] is False
    # google 8.9: no default node pool is created when initial_node_count and node_config are
    # left out (remove_default_node_pool is deprecated).
    for gone in ("remove_default_node_pool", "initial_node_count", "node_config"):
        assert gone not in cluster, f"google_container_cluster.this sets {gone}"

    pool = resource("gke/cluster", "google_container_node_pool", "app")
    autoscaling = only(pool["autoscaling"])
    assert expression(autoscaling["total_min_node_count"]) == "var.node_min_count"
    assert expression(autoscaling["total_max_node_count"]) == "var.node_max_count"
    node = only(pool["node_config"])
    assert literal(only(node["workload_metadata_config"])["mode"]) == "GKE_METADATA"
    shielded = only(node["shielded_instance_config"])
    assert is_true(shielded["enable_secure_boot"])

    binding = resource("gke/cluster", "google_service_account_iam_member", "app_workload_identity")
    assert literal(binding["role"]) == "roles/iam.workloadIdentityUser"
    assert "var.app_namespace" in binding["member"] and "var.app_service_account" in str(
        binding["member"]
    )

    subnet = resource("gke/cluster", "google_compute_subnetwork", "nodes")
    assert len(subnet["secondary_ip_range"]) == 2


def test_eks_endpoint_and_nodes() -> None:
    eks = labelled("eks/cluster", "module")["eks"]
    assert eks["endpoint_private_access"] is True
    assert expression(eks["endpoint_public_access_cidrs"]) == (
        "var.cluster_endpoint_public_access_cidrs"
    )
    assert "eks_managed_node_groups" in eks
    group = eks["eks_managed_node_groups"]["app"]
    assert expression(group["min_size"]) == "var.node_min_count"
    assert expression(group["max_size"]) == "var.node_max_count"
    # The autoscaler's AWS identity comes with the cluster, its release with the workloads.
    association = resource("eks/cluster", "aws_eks_pod_identity_association", "cluster_autoscaler")
    assert expression(association["role_arn"]) == "aws_iam_role.cluster_autoscaler.arn"
    release = resource("eks/app", "helm_release", "cluster_autoscaler")
    assert "local.cluster.cluster_autoscaler_service_account" in json.dumps(release)


@pytest.mark.parametrize("directory", CONFIG_DIRS)
def test_nothing_is_open_to_the_world(directory: str) -> None:
    for path in sorted((TERRAFORM / directory).glob("*.tf")):
        for where, key, value in walk(parse(path)):
            if key == "publicly_accessible":
                assert value is False, f"{rel(path)}: {where}"
            if key == "ipv4_enabled":
                assert value is False, f"{rel(path)}: {where}"
            if key in {"cidr_blocks", "ipv6_cidr_blocks"} and ".ingress" in where:
                assert "0.0.0.0/0" not in str(value) and "::/0" not in str(value), where
    # Only the explicit deny-all firewall rule may name 0.0.0.0/0 as a source.
    firewalls = [
        b for (t, _), b in resources("gke/cluster").items() if t == "google_compute_firewall"
    ]
    for rule in firewalls:
        if "0.0.0.0/0" in str(rule.get("source_ranges")):
            assert "deny" in rule and "allow" not in rule


@pytest.mark.parametrize("path", hcl_files(), ids=rel)
def test_no_secret_literal_in_code(path: Path) -> None:
    """Secret-like attributes hold references or variables, never string literals."""
    if path.name.endswith(".tftest.hcl"):
        return  # test fixtures (mocked providers) may hold made-up values
    for where, key, value in walk(parse(path)):
        text = literal(value)
        normalized = key.lower().replace("-", "_")
        if text and SECRET_KEY.search(normalized):
            pytest.fail(f"{rel(path)}: {where} holds a literal secret")
        if isinstance(value, str) and URL_WITH_PASSWORD.search(value):
            pytest.fail(f"{rel(path)}: {where} holds a URL with a password")


def test_secrets_reach_the_chart_only_through_kubernetes_secrets() -> None:
    main = (TERRAFORM / "modules/flashsale/main.tf").read_text()
    for secret in ("redis", "database", "tokens"):
        assert f'resource "kubernetes_secret_v1" "{secret}"' in main
    chart_values = main[main.index("chart_values = {") : main.index("image_values = {")]
    for name in ("var.redis_url", "var.database_url", "var.token_key", "var.admin_token"):
        assert name not in chart_values, f"{name} must not be passed as a Helm value"
    assert 'repository       = "https://haproxytech.github.io/helm-charts"' in main
    assert 'chart            = "kubernetes-ingress"' in main
    # The app stages hand the connection strings over as they came, sensitive all the way.
    for stage in APP_STAGES:
        call = labelled(stage, "module")["flashsale"]
        assert expression(call["redis_url"]) == "local.cluster.redis_url"
        assert expression(call["database_url"]) == "local.cluster.database_url"


def leaf_paths(node: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if not key.startswith("__"):
                yield from leaf_paths(value, (*prefix, label(key)))
    else:
        yield prefix


def module_local(name: str) -> dict[str, Any]:
    for block in config("modules/flashsale").get("locals", []):
        if name in block:
            return block[name]
    raise AssertionError(f"modules/flashsale: no local {name}")


def test_chart_values_exist_in_the_chart() -> None:
    """Every value the module always sets is a key of charts/flashsale/values.yaml (whose schema
    refuses unknown keys, so a rename in the chart would otherwise fail only at apply)."""
    values_file = REPO / "charts" / "flashsale" / "values.yaml"
    if not values_file.exists():
        pytest.skip("charts/flashsale/values.yaml is not there yet")
    chart = yaml.safe_load(values_file.read_text())
    module_values = {**module_local("chart_values"), **module_local("image_values")}
    assert module_values
    for path in leaf_paths(module_values):
        node: Any = chart
        for key in path:
            assert isinstance(node, dict) and key in node, (
                f"the module sets {'.'.join(path)}, which charts/flashsale/values.yaml lacks"
            )
            node = node[key]


def test_redis_cluster_reaches_the_chart_only_when_chosen() -> None:
    """externalRedis.cluster = "true" (FLASHSALE_REDIS_CLUSTER) goes to the chart in a values
    document of its own, only with redis_cluster; both app stages set redis_cluster from the
    cluster stage's topology."""
    values = module_local("redis_cluster_values")
    assert {k: v for k, v in values["externalRedis"].items() if not k.startswith("__")} == {
        "cluster": '"true"'
    }
    release = resource("modules/flashsale", "helm_release", "flashsale")
    assert "var.redis_cluster ? [yamlencode(local.redis_cluster_values)] : []" in expression(
        release["values"]
    )
    assert variable_default("modules/flashsale", "redis_cluster") is False
    for stage in APP_STAGES:
        call = labelled(stage, "module")["flashsale"]
        assert expression(call["redis_cluster"]) == 'local.cluster.redis_topology == "cluster"'
    gke = labelled("gke/app", "module")["flashsale"]
    assert (
        expression(gke["redis_node_port_range"]) == "try(local.cluster.redis_node_port_range, null)"
    )


def test_redis_cluster_value_is_one_the_chart_accepts() -> None:
    schema_file = REPO / "charts" / "flashsale" / "values.schema.json"
    schema = json.loads(schema_file.read_text())
    redis = schema["properties"]["externalRedis"]
    if "cluster" not in redis.get("properties", {}):
        pytest.skip(
            "charts/flashsale does not have externalRedis.cluster yet (added by the chart "
            "work); until then the module sends it only with redis_cluster = true"
        )
    spec = redis["properties"]["cluster"]
    allowed = spec.get("enum")
    assert allowed is None or "true" in allowed, spec
    assert spec.get("type") in (None, "string") or "string" in spec.get("type", []), spec


# ---------------------------------------------------------------------------------------------
# Tools: checkov, terraform fmt, tflint, terraform-docs, terraform test
# ---------------------------------------------------------------------------------------------


def test_checkov_finds_nothing(tmp_path: Path) -> None:
    if not CHECKOV.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{rel(CHECKOV)} is missing: `make checkov` builds it")
        pytest.skip(f"{rel(CHECKOV)} is missing (run `make checkov`); CI fails instead")
    # Scan a copy without .terraform/: modules a local `terraform init` downloaded would
    # otherwise be scanned too, and the result would depend on the machine.
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, copy, ignore=shutil.ignore_patterns(".terraform*"))
    result = subprocess.run(
        [
            str(CHECKOV),
            "--framework",
            "terraform",
            "--skip-download",
            "--compact",
            "-o",
            "json",
            "-d",
            str(copy),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    assert len(reports) == 1 and reports[0]["check_type"] == "terraform", result.stdout[:500]
    summary = reports[0]["summary"]
    failed = reports[0]["results"]["failed_checks"]
    assert not failed, "\n".join(
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}" for c in failed
    )
    assert summary["parsing_errors"] == 0
    assert summary["passed"] >= 150, summary  # a scan that saw nothing would pass trivially

    skipped = reports[0]["results"]["skipped_checks"]
    skipped_ids = {c["check_id"] for c in skipped}
    assert skipped_ids <= set(CHECKOV_SKIPS), (
        f"undocumented skips: {skipped_ids - set(CHECKOV_SKIPS)}"
    )
    assert set(CHECKOV_SKIPS) <= skipped_ids, f"stale skips: {set(CHECKOV_SKIPS) - skipped_ids}"
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason) > 20, f"{check['check_id']} on {check['resource']} has no reason"


def terraform_binary() -> str:
    binary = shutil.which("terraform")
    if binary is None:
        pytest.skip("the terraform binary is not on PATH: HCL is checked by python-hcl2 instead")
    return binary


def test_terraform_fmt() -> None:
    binary = terraform_binary()
    result = subprocess.run(
        [binary, "fmt", "-check", "-recursive", "-diff", "-no-color", str(TERRAFORM)],
        capture_output=True,
        text=True,
        timeout=120,
        env=terraform_env(),
    )
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}"


def tool_binary(tool: str) -> Path:
    """The tool built by `make terraform-tools` at its pinned version (skipped where it is not
    built; in CI, where `make test` builds it, a missing binary fails)."""
    go_mod = REPO / "scripts" / "terraform-tools" / tool / "go.mod"
    match = re.search(rf"^\s*{re.escape(TOOLS[tool])} (v\S+)", go_mod.read_text(), re.M)
    assert match, f"{rel(go_mod)} does not require {TOOLS[tool]}"
    binary = REPO / ".cache" / "terraform-tools" / f"{tool}-{match.group(1)}" / tool
    if not binary.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{rel(binary)} is missing: `make terraform-tools` builds it")
        pytest.skip(f"{rel(binary)} is missing (run `make terraform-tools`); CI fails instead")
    return binary


def test_tflint_finds_nothing() -> None:
    """tflint with its bundled terraform ruleset (preset "all"; terraform/.tflint.hcl) over every
    configuration. The aws and google rulesets download from GitHub and are not used."""
    tflint = tool_binary("tflint")
    result = subprocess.run(
        [
            str(tflint),
            "--recursive",
            "--config",
            str(TERRAFORM / ".tflint.hcl"),
            "--format",
            "compact",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=TERRAFORM,
        env={**os.environ, "TFLINT_LOG": ""},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # It really ran its rules: the bundled ruleset is there and every configuration was seen.
    version = subprocess.run(
        [str(tflint), "--version"], capture_output=True, text=True, timeout=60, cwd=TERRAFORM
    )
    assert "ruleset.terraform" in version.stdout, version.stdout


def test_tflint_catches_a_problem(tmp_path: Path) -> None:
    """The tflint run above is not vacuous: an untyped, undocumented, unused variable fails."""
    tflint = tool_binary("tflint")
    (tmp_path / "main.tf").write_text(
        'terraform {\n  required_version = ">= 1.9.0"\n}\nvariable "unused" {}\n'
    )
    result = subprocess.run(
        [
            str(tflint),
            "--config",
            str(TERRAFORM / ".tflint.hcl"),
            "--format",
            "compact",
            "--no-color",
            f"--chdir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    for rule in (
        "terraform_typed_variables",
        "terraform_documented_variables",
        "terraform_unused_declarations",
    ):
        assert rule in result.stdout, result.stdout


@pytest.mark.parametrize("directory", CONFIG_DIRS)
def test_terraform_docs_are_current(directory: str) -> None:
    """Each README.md holds, between its BEGIN_TF_DOCS/END_TF_DOCS markers, exactly what
    terraform-docs writes from the configuration (`make terraform-docs` rewrites it)."""
    docs = tool_binary("terraform-docs")
    readme = (TERRAFORM / directory / "README.md").read_text()
    assert "<!-- BEGIN_TF_DOCS -->" in readme and "<!-- END_TF_DOCS -->" in readme
    result = subprocess.run(
        [
            str(docs),
            "--config",
            str(TERRAFORM / ".terraform-docs.yml"),
            "--output-check",
            str(TERRAFORM / directory),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (
        f"terraform/{directory}/README.md is out of date (run `make terraform-docs`):\n"
        + result.stdout
        + result.stderr
    )
    for name in labelled(directory, "variable"):
        assert name.replace("_", "\\_") in readme, f"{directory}: {name} not documented"


# ---------------------------------------------------------------------------------------------
# Lock files: pinned provider builds, committed per root once the registry can be reached
# ---------------------------------------------------------------------------------------------


def lock_violations(lock_text: str, directory: str) -> list[str]:
    """What a .terraform.lock.hcl says that disagrees with the configuration's constraints:
    a provider locked outside its constraint, or a required provider missing from the lock."""
    problems = []
    locked = dict(
        re.findall(
            r'provider "registry\.terraform\.io/([^"]+)" \{\s*version\s*=\s*"([^"]+)"',
            lock_text,
        )
    )
    wanted = {
        literal(spec["source"]): literal(spec["version"])
        for spec in required_providers(directory).values()
    }
    if directory in APP_STAGES:  # providers the local module requires come along
        wanted.update(
            {
                literal(spec["source"]): literal(spec["version"])
                for spec in required_providers("modules/flashsale").values()
            }
        )
    for source, constraint in wanted.items():
        if source not in locked:
            problems.append(f"{source} is not locked")
        elif not satisfies(locked[source], constraint):
            problems.append(f"{source} is locked at {locked[source]}, outside {constraint}")
    for block in re.findall(r'provider "registry\.terraform\.io/[^"]+" \{.*?\n\}', lock_text, re.S):
        if not re.search(r'"h1:[A-Za-z0-9+/=]{44}"', block):
            problems.append("a provider is locked without an h1: hash")
    return problems


def test_lock_check_catches_disagreements() -> None:
    """The lock-file check is not vacuous (a made-up lock text, never committed)."""
    stale = (
        'provider "registry.terraform.io/hashicorp/google" {\n'
        '  version     = "7.40.0"\n'
        '  constraints = "~> 7.40"\n'
        '  hashes = [\n    "h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",\n  ]\n}\n'
    )
    problems = lock_violations(stale, "gke/cluster")
    assert "hashicorp/google is locked at 7.40.0, outside ~> 8.9" in problems
    assert "hashicorp/random is not locked" in problems
    assert satisfies("8.9.0", "~> 8.9") and satisfies("8.12.1", "~> 8.9")
    assert not satisfies("9.0.0", "~> 8.9") and not satisfies("8.8.0", "~> 8.9")
    assert satisfies("1.11.4", ">= 1.9.0, < 2.0.0") and not satisfies("2.0.0", ">= 1.9.0, < 2.0.0")


@pytest.mark.parametrize("root", ROOTS)
def test_committed_lock_file_agrees_with_the_constraints(root: str) -> None:
    lock = TERRAFORM / root / ".terraform.lock.hcl"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(lock)], cwd=REPO, capture_output=True, timeout=30
    )
    assert ignored.returncode == 1, f"{rel(lock)} is git-ignored: it must be committable"
    if not lock.exists():
        pytest.skip(
            f"{rel(lock)} is not committed yet: `terraform providers lock` needs the Terraform "
            "registry (run `make terraform-lock` where it is reachable)"
        )
    problems = lock_violations(lock.read_text(), root)
    assert not problems, f"{rel(lock)}: " + "; ".join(problems)


def test_make_terraform_lock_covers_every_root() -> None:
    dry = subprocess.run(
        ["make", "-n", "terraform-lock"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    for root in ROOTS:
        assert f"terraform/{root}" in dry.stdout, root
    for platform in ("linux_amd64", "darwin_arm64"):
        assert f"-platform={platform}" in dry.stdout


# What `terraform init` says when the registry cannot be reached (no network here).
OFFLINE = (
    "could not connect to registry",
    "Failed to query available provider packages",
    "Failed to download module",
    "no such host",
    "dial tcp",
    "i/o timeout",
)


@pytest.mark.parametrize("directory", CONFIG_DIRS)
def test_terraform_test_with_mocked_providers(directory: str, tmp_path: Path) -> None:
    """`terraform test` (plan runs against mock_provider) in a copy of terraform/."""
    binary = terraform_binary()
    if os.environ.get("FLASHSALE_TERRAFORM_INIT") != "1":
        # `terraform init` downloads providers and modules from the Terraform registry; never
        # reach out to it unasked (this workplace's machines have no route there)
        pytest.skip(
            "terraform test needs `terraform init` to reach the Terraform registry: "
            "set FLASHSALE_TERRAFORM_INIT=1 where it can"
        )
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, copy, ignore=shutil.ignore_patterns(".terraform*"))
    workdir = copy / directory
    # Providers are downloaded once and reused by later runs (.run/ is not committed).
    cache = REPO / ".run" / "terraform-plugin-cache"
    cache.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        "CHECKPOINT_DISABLE": "1",
        "TF_PLUGIN_CACHE_DIR": str(cache),
    }
    init = subprocess.run(
        [binary, "init", "-backend=false", "-input=false", "-no-color"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=workdir,
        env=env,
    )
    if init.returncode != 0:
        output = init.stdout + init.stderr
        if any(marker in output for marker in OFFLINE):
            first = next((line for line in output.splitlines() if "Error:" in line), "")
            pytest.skip(
                "terraform init cannot download providers/modules here (offline registry): "
                + first.strip()
            )
        pytest.fail(f"terraform init failed:\n{output}")
    result = subprocess.run(
        [binary, "test", "-no-color"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=workdir,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
