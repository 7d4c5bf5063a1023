# tflint with its bundled "terraform" ruleset only (language rules: pinned versions, typed and
# documented variables and outputs, unused declarations, deprecated syntax, module structure).
# The aws and google rulesets are plugins that `tflint --init` downloads from GitHub releases,
# which this project's machines cannot reach; they are not enabled here.
config {
  # Registry modules (terraform-aws-modules) are not installed offline: lint the calls to them,
  # not their insides. Local modules (../../modules/flashsale) are followed.
  call_module_type = "local"
}

plugin "terraform" {
  enabled = true
  preset  = "all"
}
