"""Static checks of terraform/ (issue 6): every file parses, versions are pinned, inputs are
typed and described, data stores are private, encrypted and backed up, no secret is written in
the code, checkov finds nothing, and `terraform test` passes where Terraform can run.

Nothing here needs a cloud account. `python-hcl2` reads the files as Terraform does;
checkov comes from `.venv-checkov` (built by `make checkov`, which `make test` depends on).
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

REPO = Path(__file__).resolve().parent.parent
TERRAFORM = REPO / "terraform"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"

# Directories that hold Terraform configuration: the two roots and the application module.
ROOTS = ("gke", "eks")
CONFIG_DIRS = (*ROOTS, "modules/flashsale")
EXAMPLES = ("small.tfvars", "spike.tfvars")

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


# ---------------------------------------------------------------------------------------------
# Layout and parsing
# ---------------------------------------------------------------------------------------------


def test_layout_is_complete() -> None:
    for root in ROOTS:
        for name in ("versions.tf", "variables.tf", "outputs.tf"):
            assert (TERRAFORM / root / name).is_file(), f"terraform/{root}/{name} is missing"
        for example in EXAMPLES:
            assert (TERRAFORM / root / "examples" / example).is_file()
        assert list((TERRAFORM / root / "tests").glob("*.tftest.hcl")), root
    assert (TERRAFORM / "modules/flashsale/main.tf").is_file()
    assert (TERRAFORM / "README.md").is_file()


@pytest.mark.parametrize("path", hcl_files(), ids=rel)
def test_every_file_parses(path: Path) -> None:
    assert parse(path), f"{rel(path)} is empty"


# ---------------------------------------------------------------------------------------------
# Versions: Terraform, every provider and every module pinned
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", CONFIG_DIRS)
def test_terraform_and_providers_are_pinned(directory: str) -> None:
    terraform = config(directory).get("terraform", [])
    assert len(terraform) == 1, f"{directory}: exactly one terraform block expected"
    block = terraform[0]

    required = literal(block.get("required_version"))
    assert required and ">=" in required and "<" in required.replace("<=", "<"), (
        f"{directory}: required_version needs a lower and an upper bound, got {required!r}"
    )

    providers = only(block.get("required_providers"))
    declared = {label(k): v for k, v in providers.items() if not k.startswith("__")}
    assert declared, f"{directory}: no required_providers"
    for name, spec in declared.items():
        source = literal(spec.get("source"))
        version = literal(spec.get("version"))
        assert source and source.startswith("hashicorp/"), f"{directory}: {name} source {source}"
        assert version and CONSTRAINT_WITH_UPPER_BOUND.match(version), (
            f"{directory}: provider {name} must be pinned (x.y.z or ~> x.y), got {version!r}"
        )

    # Every provider a resource or data source of this directory uses is declared.
    used = {rtype.split("_")[0] for rtype, _ in resources(directory)}
    used |= {rtype.split("_")[0] for rtype, _ in resources(directory, "data")}
    assert used <= set(declared), f"{directory}: undeclared providers {used - set(declared)}"


@pytest.mark.parametrize("directory", CONFIG_DIRS)
def test_every_module_is_pinned(directory: str) -> None:
    for name, body in labelled(directory, "module").items():
        source = literal(body.get("source"))
        assert source, f"{directory}: module {name} has no literal source"
        if source.startswith(("./", "../")):
            assert "version" not in body, f"{directory}: local module {name} cannot have version"
            continue
        version = literal(body.get("version"))
        assert version and CONSTRAINT_WITH_UPPER_BOUND.match(version), (
            f"{directory}: module {name} must be pinned (x.y.z or ~> x.y), got {version!r}"
        )


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
        if re.search(r"(cidr|_count$|_replicas$|retention|namespace$)", name):
            assert body.get("validation"), f"{directory}: variable {name} needs a validation"


@pytest.mark.parametrize("root", ROOTS)
def test_outputs_tell_how_to_connect(root: str) -> None:
    outputs = labelled(root, "output")
    assert "ingress_address" in outputs
    commands = " ".join(str(o.get("value")) for o in outputs.values())
    expected = {
        "gke": "gcloud container clusters get-credentials",
        "eks": "aws eks update-kubeconfig",
    }[root]
    assert expected in commands


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("example", EXAMPLES)
def test_examples_set_only_known_variables(root: str, example: str) -> None:
    variables = labelled(root, "variable")
    values = {k: v for k, v in parse(TERRAFORM / root / "examples" / example).items()}
    values = {k: v for k, v in values.items() if not k.startswith("__")}
    unknown = set(values) - set(variables)
    assert not unknown, f"{root}/examples/{example}: unknown variables {unknown}"
    required = {n for n, b in variables.items() if "default" not in b}
    assert required <= set(values), f"{root}/examples/{example}: missing {required - set(values)}"
    assert values["node_max_count"] >= values["node_min_count"]


@pytest.mark.parametrize("root", ROOTS)
def test_spike_example_is_larger_than_small(root: str) -> None:
    small = parse(TERRAFORM / root / "examples" / "small.tfvars")
    spike = parse(TERRAFORM / root / "examples" / "spike.tfvars")
    for key in ("node_max_count", "node_min_count", "api_max_replicas"):
        assert spike[key] > small[key], f"{root}: spike {key} must exceed small"


# ---------------------------------------------------------------------------------------------
# Data stores: private, encrypted, authenticated, backed up
# ---------------------------------------------------------------------------------------------


def test_elasticache_is_encrypted_authenticated_and_multi_az() -> None:
    group = resource("eks", "aws_elasticache_replication_group", "this")
    assert is_true(group["at_rest_encryption_enabled"])
    assert is_true(group["transit_encryption_enabled"])
    assert expression(group["auth_token"]) == "random_password.redis_auth.result"
    assert is_true(group["automatic_failover_enabled"])
    assert is_true(group["multi_az_enabled"])
    assert "kms_key_id" in group
    assert "1 + var.redis_replicas" in expression(group["num_cache_clusters"])
    assert "elasticache_subnet_group_name" in expression(group["subnet_group_name"])

    sg = resource("eks", "aws_security_group", "redis")
    for rule in sg["ingress"]:
        assert "cidr_blocks" not in rule and "ipv6_cidr_blocks" not in rule, rule
        assert rule["security_groups"] == ["${module.eks.node_security_group_id}"]
        assert (rule["from_port"], rule["to_port"]) == (6379, 6379)


def test_redis_url_uses_tls_and_the_auth_token() -> None:
    eks = (TERRAFORM / "eks" / "redis.tf").read_text()
    assert '"rediss://:%s@%s:%d/0"' in eks
    assert "urlencode(random_password.redis_auth.result)" in eks
    gke = (TERRAFORM / "gke" / "redis.tf").read_text()
    assert '"rediss://:%s@%s:%d/0?ssl_cert_reqs=required' in gke
    assert "urlencode(google_redis_instance.this.auth_string)" in gke


def test_rds_is_encrypted_private_multi_az_and_backed_up() -> None:
    db = resource("eks", "aws_db_instance", "this")
    assert is_true(db["storage_encrypted"])
    assert db["publicly_accessible"] is False
    assert is_true(db["multi_az"])
    assert expression(db["backup_retention_period"]) == "var.db_backup_retention_days"
    assert variable_default("eks", "db_backup_retention_days") >= 7
    validation = only(labelled("eks", "variable")["db_backup_retention_days"]["validation"])
    assert ">= 7" in expression(validation["condition"])
    assert expression(db["deletion_protection"]) == "var.db_deletion_protection"
    assert variable_default("eks", "db_deletion_protection") is True
    assert db["skip_final_snapshot"] is False
    assert (
        expression(db.get("password")) == "random_password.db.result"
        or db.get("manage_master_user_password") is True
    )
    assert "database_subnet_group_name" in expression(db["db_subnet_group_name"])

    params = resource("eks", "aws_db_parameter_group", "this")["parameter"]
    assert any(literal(p["name"]) == "rds.force_ssl" and literal(p["value"]) == "1" for p in params)

    sg = resource("eks", "aws_security_group", "db")
    for rule in sg["ingress"]:
        assert "cidr_blocks" not in rule, rule
        assert rule["security_groups"] == ["${module.eks.node_security_group_id}"]


def test_memorystore_is_ha_authenticated_and_encrypted_in_transit() -> None:
    redis = resource("gke", "google_redis_instance", "this")
    assert literal(redis["tier"]) == "STANDARD_HA"
    assert is_true(redis["auth_enabled"])
    assert literal(redis["transit_encryption_mode"]) == "SERVER_AUTHENTICATION"
    assert literal(redis["connect_mode"]) == "PRIVATE_SERVICE_ACCESS"


def test_cloud_sql_is_private_regional_and_backed_up() -> None:
    sql = resource("gke", "google_sql_database_instance", "this")
    assert expression(sql["deletion_protection"]) == "var.db_deletion_protection"
    assert variable_default("gke", "db_deletion_protection") is True
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
    user = resource("gke", "google_sql_user", "flashsale")
    assert expression(user["password"]) == "random_password.db.result"


def test_gke_cluster_is_private_and_hardened() -> None:
    cluster = resource("gke", "google_container_cluster", "this")
    assert expression(cluster["location"]) == "var.region"  # regional
    private = only(cluster["private_cluster_config"])
    assert is_true(private["enable_private_nodes"])
    assert "svc.id.goog" in str(only(cluster["workload_identity_config"])["workload_pool"])
    assert expression(only(cluster["release_channel"])["channel"]) == "var.release_channel"
    assert is_true(cluster["enable_shielded_nodes"])
    assert is_true(only(cluster["network_policy"])["enabled"])
    assert cluster["master_authorized_networks_config"]
    assert cluster["enable_legacy_abac"] is False

    pool = resource("gke", "google_container_node_pool", "app")
    autoscaling = only(pool["autoscaling"])
    assert expression(autoscaling["total_min_node_count"]) == "var.node_min_count"
    assert expression(autoscaling["total_max_node_count"]) == "var.node_max_count"
    node = only(pool["node_config"])
    assert literal(only(node["workload_metadata_config"])["mode"]) == "GKE_METADATA"
    shielded = only(node["shielded_instance_config"])
    assert is_true(shielded["enable_secure_boot"])

    binding = resource("gke", "google_service_account_iam_member", "app_workload_identity")
    assert literal(binding["role"]) == "roles/iam.workloadIdentityUser"
    assert "var.app_namespace" in binding["member"] and "var.app_service_account" in str(
        binding["member"]
    )

    subnet = resource("gke", "google_compute_subnetwork", "nodes")
    assert len(subnet["secondary_ip_range"]) == 2


def test_eks_endpoint_and_nodes() -> None:
    eks = labelled("eks", "module")["eks"]
    assert eks["cluster_endpoint_private_access"] is True
    assert expression(eks["cluster_endpoint_public_access_cidrs"]) == (
        "var.cluster_endpoint_public_access_cidrs"
    )
    assert "eks_managed_node_groups" in eks
    group = eks["eks_managed_node_groups"]["app"]
    assert expression(group["min_size"]) == "var.node_min_count"
    assert expression(group["max_size"]) == "var.node_max_count"
    assert resource("eks", "helm_release", "cluster_autoscaler")


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
    firewalls = [b for (t, _), b in resources("gke").items() if t == "google_compute_firewall"]
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


def leaf_paths(node: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if not key.startswith("__"):
                yield from leaf_paths(value, (*prefix, label(key)))
    else:
        yield prefix


def test_chart_values_exist_in_the_chart() -> None:
    """Every value the module sets is a key of charts/flashsale/values.yaml (whose schema
    refuses unknown keys, so a rename in the chart would otherwise fail only at apply)."""
    values_file = REPO / "charts" / "flashsale" / "values.yaml"
    if not values_file.exists():
        pytest.skip("charts/flashsale/values.yaml is not there yet")
    chart = yaml.safe_load(values_file.read_text())
    local_blocks = config("modules/flashsale").get("locals", [])
    module_values = {}
    for block in local_blocks:
        for name in ("chart_values", "image_values"):
            if name in block:
                module_values.update(block[name])
    assert module_values
    for path in leaf_paths(module_values):
        node: Any = chart
        for key in path:
            assert isinstance(node, dict) and key in node, (
                f"the module sets {'.'.join(path)}, which charts/flashsale/values.yaml lacks"
            )
            node = node[key]


# ---------------------------------------------------------------------------------------------
# Tools: checkov, terraform fmt, terraform test
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
    )
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}"


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
