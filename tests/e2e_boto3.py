"""boto3 against `winbundle serve` (run by tests/e2e.sh, which sets the E2E_* variables).

bundle_instance with the policy JSON as boto3 takes it (it base64-encodes the blob itself),
the bundle_task_complete waiter, describe_bundle_tasks, DryRun, BundlingInProgress,
cancel_bundle_task, and the error codes boto3 raises.
"""

import base64
import datetime
import hashlib
import hmac
import os
import sys
import time

import boto3
from botocore.exceptions import ClientError, WaiterError

ENDPOINT = os.environ["E2E_ENDPOINT"]
OWNER_AK = os.environ["E2E_OWNER_AK"]
OWNER_SK = os.environ["E2E_OWNER_SK"]
SMALL = "i-0123456789abcdef0"
HUGE = "i-0bbbbbbbbbbbbbbb1"

ec2 = boto3.client(
    "ec2",
    endpoint_url=ENDPOINT,
    region_name="us-east-1",
    aws_access_key_id=os.environ["E2E_CALLER_AK"],
    aws_secret_access_key=os.environ["E2E_CALLER_SK"],
)


def storage(prefix):
    """The Storage parameter: policy JSON (boto3 base64-encodes it) and its signature."""
    exp = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=24)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
    policy = (
        '{"expiration": "%s","conditions": [{"bucket": "e2e-bucket"},{"acl": "ec2-bundle-read"},'
        '["starts-with", "$key", "%s"]]}' % (exp, prefix)
    )
    b64 = base64.b64encode(policy.encode()).decode()
    sig = base64.b64encode(hmac.new(OWNER_SK.encode(), b64.encode(), hashlib.sha1).digest()).decode()
    return {
        "S3": {
            "Bucket": "e2e-bucket",
            "Prefix": prefix,
            "AWSAccessKeyId": OWNER_AK,
            "UploadPolicy": policy.encode(),
            "UploadPolicySignature": sig,
        }
    }


def error_code(call, **kw):
    try:
        call(**kw)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{call.__name__} {kw} did not fail")


def state(bundle_id):
    return ec2.describe_bundle_tasks(BundleIds=[bundle_id])["BundleTasks"][0]


# A bundle of the GPT fixture, waited for with the waiter.
task = ec2.bundle_instance(InstanceId=SMALL, Storage=storage("e2e/boto3"))["BundleTask"]
assert task["State"] == "pending", task
assert "UploadPolicySignature" not in str(task), task
ec2.get_waiter("bundle_task_complete").wait(
    BundleIds=[task["BundleId"]], WaiterConfig={"Delay": 1, "MaxAttempts": 120}
)
done = state(task["BundleId"])
assert done["State"] == "complete" and done["Progress"] == "100%", done
assert done["Storage"]["S3"] == {"Bucket": "e2e-bucket", "Prefix": "e2e/boto3"}, done

# DryRun: DryRunOperation (HTTP 412) and nothing started.
before = len(ec2.describe_bundle_tasks()["BundleTasks"])
assert error_code(ec2.bundle_instance, InstanceId=SMALL, Storage=storage("e2e/dry"), DryRun=True) == (
    "DryRunOperation",
    412,
)
assert len(ec2.describe_bundle_tasks()["BundleTasks"]) == before

# Error codes.
assert error_code(ec2.bundle_instance, InstanceId="i-0fffffffffffffff0", Storage=storage("e2e/x")) == (
    "InvalidInstanceID.NotFound",
    400,
)
assert error_code(ec2.describe_bundle_tasks, BundleIds=["bun-0000dead"]) == ("InvalidBundleID.NotFound", 400)
assert error_code(ec2.cancel_bundle_task, BundleId="bun-0000dead") == ("InvalidBundleID.NotFound", 400)
assert error_code(
    ec2.describe_bundle_tasks, Filters=[{"Name": "colour", "Values": ["red"]}]
) == ("InvalidParameterValue", 400)
bad = storage("e2e/bad")
bad["S3"]["Bucket"] = "Not_A_Bucket"
assert error_code(ec2.bundle_instance, InstanceId=SMALL, Storage=bad) == ("InvalidParameterValue", 400)

# A running bundle: a second one of the same instance is refused; cancel ends it failed.
running = ec2.bundle_instance(InstanceId=HUGE, Storage=storage("e2e/boto3-huge"))["BundleTask"]
assert error_code(ec2.bundle_instance, InstanceId=HUGE, Storage=storage("e2e/again")) == (
    "BundlingInProgress",
    400,
)
cancelled = ec2.cancel_bundle_task(BundleId=running["BundleId"])["BundleTask"]
assert cancelled["State"] == "cancelling", cancelled
deadline = time.time() + 120
while state(running["BundleId"])["State"] not in ("failed", "complete"):
    assert time.time() < deadline, "cancel did not finish"
    time.sleep(0.3)
final = state(running["BundleId"])
assert final["State"] == "failed" and final["BundleTaskError"]["Code"] == "Cancelled", final
try:
    ec2.get_waiter("bundle_task_complete").wait(
        BundleIds=[running["BundleId"]], WaiterConfig={"Delay": 1, "MaxAttempts": 3}
    )
    raise AssertionError("the waiter accepted a failed task")
except WaiterError as e:
    assert "failure state" in str(e), e

print("boto3: all checks passed")
sys.exit(0)
