#!/usr/bin/env bash
# Static checks of the AWS deployment definition (template.yaml and the state machine's ASL).
#
# Offline: no AWS account is needed (dummy credentials). Installs its tools on first use into
# .venv-tools/ from scripts/tools-requirements.txt and reuses them while that file is unchanged.
# Run from anywhere; exits non-zero, naming the failed check, on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."

TEMPLATE=template.yaml
ASL=state_machine/cdc_pipeline.asl.json
REQUIREMENTS=scripts/tools-requirements.txt
TOOLS_DIR=${TOOLS_DIR:-.venv-tools}
PYTHON=${PYTHON:-python3.11}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
started=$SECONDS
failures=()

say() { printf '\n== %s\n' "$*"; }
fail() { failures+=("$1"); printf 'FAILED: %s\n' "$1"; }

# Lines of one "# env:" (or the "# npm:") section of the requirements file.
section() {
    awk -v want="$1" '
        /^# env:/ { name = $3; next }
        /^# npm:/ { if (want == "npm") print $3; name = ""; next }
        /^[[:space:]]*(#|$)/ { next }
        name == want { print }
    ' "$REQUIREMENTS"
}

# Create or refresh one tool virtualenv; skipped when its pinned lines are unchanged.
ensure_env() {
    local name=$1 dir=$TOOLS_DIR/$1 stamp lines
    lines=$(section "$name")
    [[ -n $lines ]] || { echo "no '# env: $name' section in $REQUIREMENTS" >&2; return 1; }
    stamp=$( { echo "$lines"; "$PYTHON" -VV; } | sha256sum | cut -d' ' -f1)
    if [[ -f $dir/.stamp && $(cat "$dir/.stamp") == "$stamp" ]]; then
        return 0
    fi
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir"
    echo "$lines" > "$dir/requirements.txt"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$dir/requirements.txt"
    "$dir/bin/python" -m pip check
    echo "$stamp" > "$dir/.stamp"
}

command -v "$PYTHON" >/dev/null || { echo "$PYTHON not found: the tool environments need Python 3.11" >&2; exit 2; }
command -v npx >/dev/null || { echo "npx not found: install Node.js 20 or later (asl-validator runs with npx)" >&2; exit 2; }

say "tool environments ($TOOLS_DIR)"
mkdir -p "$TOOLS_DIR"
# The two environments install side by side: on a fresh machine that halves the wait.
envs=(sam checkov)
pids=()
for env in "${envs[@]}"; do
    ensure_env "$env" > "$WORK/install-$env.log" 2>&1 &
    pids+=("$!")
done
for i in "${!envs[@]}"; do
    env=${envs[$i]}
    if ! wait "${pids[$i]}"; then
        grep -v '^WARNING: Location' "$WORK/install-$env.log" | tail -30
        echo "installing the $env tools from $REQUIREMENTS failed (log above)" >&2
        exit 2
    fi
done
ASL_VALIDATOR=$(section npm)
SAM_ENV=$TOOLS_DIR/sam/bin
CHECKOV_ENV=$TOOLS_DIR/checkov/bin
echo "$("$SAM_ENV/sam" --version), cfn-lint $("$SAM_ENV/cfn-lint" --version | cut -d' ' -f2), checkov $("$CHECKOV_ENV/checkov" --version), $ASL_VALIDATOR (ready after $((SECONDS - started)) s)"

# Offline: dummy credentials and region, no telemetry, no Bridgecrew platform look-ups.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing
export AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
export SAM_CLI_TELEMETRY=0 BC_SKIP_MAPPING=TRUE

say "cfn-lint $TEMPLATE"
"$SAM_ENV/cfn-lint" "$TEMPLATE" && echo "no findings" || fail "cfn-lint $TEMPLATE"

say "placeholders, substitution, policy, name-length and partition rules"
# Writes the definition with every placeholder replaced by a dummy of the right type, and a raw
# AWS::StepFunctions::StateMachine wrapping it (cfn-lint validates only that form's definition).
if "$SAM_ENV/python" - "$TEMPLATE" "$ASL" "$WORK" <<'PY'; then :; else fail "placeholders, substitution, policy, name-length and partition rules"; fi
import json
import re
import sys
from pathlib import Path

from cfnlint.decode import decode

template_path, asl_path, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
template, matches = decode(template_path)
if matches:
    sys.exit(f"{template_path} does not parse: {matches}")
problems: list[str] = []

machines = [
    (name, resource["Properties"])
    for name, resource in template["Resources"].items()
    if resource.get("Type") == "AWS::Serverless::StateMachine"
    and resource.get("Properties", {}).get("DefinitionUri") == asl_path
]
if len(machines) != 1:
    sys.exit(f"expected one AWS::Serverless::StateMachine with DefinitionUri {asl_path}, found {len(machines)}")
machine, properties = machines[0]
substitutions = dict(properties.get("DefinitionSubstitutions", {}))

text = Path(asl_path).read_text()
PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")
used = set(PLACEHOLDER.findall(text))
for name in sorted(used - substitutions.keys()):
    problems.append(f"{asl_path} uses ${{{name}}}, which {machine}.DefinitionSubstitutions does not define")
for name in sorted(substitutions.keys() - used):
    problems.append(f"{machine}.DefinitionSubstitutions defines {name}, which {asl_path} never uses")


def outside_strings(source: str) -> set[int]:
    """Offsets of the characters that are not inside a JSON string literal."""
    offsets, in_string, escaped = set(), False, False
    for offset, char in enumerate(source):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        else:
            offsets.add(offset)
    return offsets


# A bare placeholder (outside quotes) becomes a JSON number after CloudFormation's textual
# substitution, so it must be fed by a Number parameter; a quoted one stays a string.
bare = {match.group(1) for match in PLACEHOLDER.finditer(text) if match.start() in outside_strings(text)}
parameters = template.get("Parameters", {})
for name in sorted(bare & substitutions.keys()):
    value = substitutions[name]
    referenced = value.get("Ref") if isinstance(value, dict) else None
    if referenced not in parameters or parameters[referenced].get("Type") != "Number":
        problems.append(
            f"${{{name}}} stands unquoted in {asl_path} (a number), so its substitution must be a Ref to a "
            f"Number parameter; it is {json.dumps(value, default=str)}"
        )


def dummy(name: str) -> str:
    if name in bare:
        return "7"
    if name == "Partition":
        return "aws"
    if name.endswith("FunctionArn"):
        return f"arn:aws:lambda:us-east-1:123456789012:function:dummy-{name}"
    if name.endswith("BucketName"):
        return "dummy-bucket-name"
    return f"dummy-{name}"


substituted = PLACEHOLDER.sub(lambda match: dummy(match.group(1)), text)
try:
    definition = json.loads(substituted)
except json.JSONDecodeError as exc:
    problems.append(f"{asl_path} is not JSON once its placeholders are substituted: {exc}")
else:
    (work / "definition.asl.json").write_text(json.dumps(definition, indent=2))
    wrapper = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Resources": {
            "StateMachine": {
                "Type": "AWS::StepFunctions::StateMachine",
                "Properties": {
                    "RoleArn": "arn:aws:iam::123456789012:role/dummy",
                    "StateMachineType": "STANDARD",
                    "Definition": definition,
                },
            }
        },
    }
    (work / "definition-wrapper.json").write_text(json.dumps(wrapper, indent=2))


def statements(node, path):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Statement" and isinstance(value, list):
                for index, statement in enumerate(value):
                    yield f"{path}/Statement[{index}]", statement
            else:
                yield from statements(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from statements(value, f"{path}[{index}]")


# No grant of a wildcard action. The one exception is the key policy statement that hands the
# key's administration to the account's IAM policies (the AWS default key policy).
ALLOWED_WILDCARD_SIDS = {"AccountAdministersTheKeyThroughIam"}
for where, statement in statements(template["Resources"], "Resources"):
    if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
        continue
    actions = statement.get("Action", [])
    actions = [actions] if isinstance(actions, str) else actions
    wild = [action for action in actions if isinstance(action, str) and "*" in action]
    if wild and statement.get("Sid") not in ALLOWED_WILDCARD_SIDS:
        problems.append(f"{where} ({statement.get('Sid', 'no Sid')}) allows wildcard action(s) {wild}")

for name, resource in template["Resources"].items():
    if resource.get("Type") == "AWS::CloudWatch::Dashboard":
        body = resource["Properties"]["DashboardBody"]
        body = body.get("Fn::Sub", body) if isinstance(body, dict) else body
        body = body[0] if isinstance(body, list) else body
        try:
            json.loads(re.sub(r"\$\{[^}]+\}", "x", str(body)))
        except json.JSONDecodeError as exc:
            problems.append(f"{name}.DashboardBody is not JSON once its ${{...}} are substituted: {exc}")
    for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
        if not str(skip.get("comment", "")).strip():
            problems.append(f"{name} skips checkov {skip.get('id')} without a comment giving the reason")

# Names derived from the stack name must fit their service's limit for the longest stack name the
# deploy accepts (MAX_STACK_NAME in cdc_pipeline/aws/deploy.py, which refuses longer ones).
import ast

deploy_module = ast.parse(Path("cdc_pipeline/aws/deploy.py").read_text())
max_stack = next(
    node.value.value
    for node in deploy_module.body
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "MAX_STACK_NAME"
)
NAME_LIMITS = {  # (resource type, property path): the service's limit on that name
    ("AWS::Serverless::StateMachine", "Name"): 80,
    ("AWS::StepFunctions::StateMachine", "StateMachineName"): 80,
    ("AWS::Glue::Job", "Name"): 255,
    ("AWS::Glue::SecurityConfiguration", "Name"): 255,
    ("AWS::Glue::Database", "DatabaseInput.Name"): 255,
    ("AWS::Logs::LogGroup", "LogGroupName"): 512,
    ("AWS::KMS::Alias", "AliasName"): 256,
    ("AWS::CloudWatch::Dashboard", "DashboardName"): 255,
}


def longest(node):
    """The longest text an intrinsic can give with a stack name of max_stack characters."""
    if isinstance(node, str):
        return len(re.sub(r"\$\{([^}]+)\}", lambda m: "x" * longest({"Ref": m.group(1)}), node))
    if isinstance(node, (int, float)):
        return len(str(node))
    if isinstance(node, dict) and len(node) == 1:
        (function, value), = node.items()
        if function == "Ref":
            if value == "AWS::StackName":
                return max_stack
            parameter = parameters.get(value)
            if parameter is None:
                raise ValueError(f"cannot bound the length of Ref {value}")
            if "MaxLength" in parameter:
                return int(parameter["MaxLength"])
            pattern = re.search(r"\{(?:\d+,)?(\d+)\}\$?$", str(parameter.get("AllowedPattern", "")))
            if pattern:
                return int(pattern.group(1))
            raise ValueError(f"parameter {value} has no MaxLength or bounded AllowedPattern")
        if function == "Fn::Sub":
            text, variables = (value, {}) if isinstance(value, str) else value
            return len(re.sub(
                r"\$\{([^}]+)\}",
                lambda m: "x" * (longest(variables[m.group(1)]) if m.group(1) in variables else longest({"Ref": m.group(1)})),
                text,
            ))
        if function == "Fn::Join":
            separator, items = value
            if isinstance(items, dict) and "Fn::Split" in items:  # join(split(x)): same length when |sep| equal
                return longest(items["Fn::Split"][1])
            return sum(longest(item) for item in items) + len(separator) * (len(items) - 1)
        if function == "Fn::If":
            return max(longest(value[1]), longest(value[2]))
    raise ValueError(f"cannot bound the length of {json.dumps(node, default=str)}")


checked_names = 0
for name, resource in template["Resources"].items():
    for (kind, path), limit in NAME_LIMITS.items():
        if resource.get("Type") != kind:
            continue
        value = resource.get("Properties", {})
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            continue
        try:
            length = longest(value)
        except ValueError as exc:
            problems.append(f"{name}.{path}: {exc}")
            continue
        checked_names += 1
        if length > limit:
            problems.append(
                f"{name}.{path} can be {length} characters with a {max_stack}-character stack name, over "
                f"the {limit} its service allows: shorten it, or lower MAX_STACK_NAME in cdc_pipeline/aws/deploy.py"
            )

# Region-safe ARNs: the partition and URL suffix come from the pseudo parameters, never literals;
# in the definition, from its Partition substitution (${AWS::Partition}).
raw_text = Path(template_path).read_text()
for number, line in enumerate(raw_text.splitlines(), 1):
    if re.search(r"arn:aws(-cn|-us-gov|-iso[a-z-]*)?:", line):
        problems.append(f"{template_path}:{number}: a literal ARN partition; write arn:${{AWS::Partition}}:")
    if re.search(r"\$\{AWS::Region\}\.amazonaws\.com", line):
        problems.append(f"{template_path}:{number}: a regional endpoint or principal with a literal "
                        "amazonaws.com; write ${AWS::URLSuffix}")
for number, line in enumerate(text.splitlines(), 1):
    if re.search(r"arn:aws(-cn|-us-gov|-iso[a-z-]*)?:", line):
        problems.append(f"{asl_path}:{number}: a literal ARN partition; write arn:${{Partition}}: "
                        f"({machine}.DefinitionSubstitutions gives Partition: !Ref AWS::Partition)")
if substitutions.get("Partition") != {"Ref": "AWS::Partition"}:
    problems.append(f"{machine}.DefinitionSubstitutions must give Partition: !Ref AWS::Partition")

# KMS use is granted on named keys only: no role may use every key.
for where, statement in statements(template["Resources"], "Resources"):
    if not isinstance(statement, dict) or statement.get("Effect") != "Allow" or "Principal" in statement:
        continue
    actions = statement.get("Action", [])
    actions = [actions] if isinstance(actions, str) else actions
    if any(str(action).startswith("kms:") for action in actions) and statement.get("Resource") == "*":
        problems.append(f"{where} ({statement.get('Sid', 'no Sid')}) grants KMS actions on every key")

for problem in problems:
    print(problem)
if problems:
    sys.exit(1)
print(f"{len(used)} placeholders, each with a substitution ({', '.join(sorted(bare)) or 'none'} numeric); "
      "no wildcard grants; dashboard body is JSON; every checkov skip has a reason; "
      f"{checked_names} stack-derived names fit their limits with a {max_stack}-character stack name; "
      "ARNs and regional principals in the template and the definition are partition-safe; "
      "KMS granted on named keys only")
PY

if [[ -f $WORK/definition.asl.json ]]; then
    say "asl-validator ($ASL_VALIDATOR) on the substituted definition"
    npx --yes "$ASL_VALIDATOR" --json-path "$WORK/definition.asl.json" || fail "asl-validator $ASL"

    say "cfn-lint on the substituted definition (AWS::StepFunctions::StateMachine, rule E3601)"
    "$SAM_ENV/cfn-lint" "$WORK/definition-wrapper.json" && echo "no findings" || fail "cfn-lint E3601 $ASL"
fi

say "sam validate (SAM transform) and sam validate --lint"
"$SAM_ENV/sam" validate --template-file "$TEMPLATE" || fail "sam validate"
"$SAM_ENV/sam" validate --lint --template-file "$TEMPLATE" || fail "sam validate --lint"

say "checkov (framework cloudformation)"
"$CHECKOV_ENV/checkov" --file "$TEMPLATE" --framework cloudformation --compact --quiet \
    --skip-download --download-external-modules false || fail "checkov $TEMPLATE"

echo
if ((${#failures[@]})); then
    printf 'check_templates: %d check(s) failed after %d s:\n' "${#failures[@]}" "$((SECONDS - started))"
    printf '  - %s\n' "${failures[@]}"
    exit 1
fi
echo "check_templates: all checks passed in $((SECONDS - started)) s"
