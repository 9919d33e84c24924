#!/usr/bin/env bash
# Makes a CA and a serving certificate for the gpuslice webhook (deploy/scheduler/webhook.yaml),
# stores them in the Secret kube-system/gpuslice-webhook-tls and sets the webhook's caBundle.
# Needs openssl and kubectl with access to the cluster. Run again to rotate (the webhook picks
# up the new pair without a restart). With cert-manager, use a Certificate instead.
set -euo pipefail
ns=kube-system
svc=gpuslice-webhook
days=${DAYS:-825}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=gpuslice-webhook-ca" \
  -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$svc.$ns.svc" \
  -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s,DNS:%s.%s,DNS:%s.%s.svc\nextendedKeyUsage=serverAuth\n' \
  "$svc" "$svc" "$ns" "$svc" "$ns" >"$dir/ext"
openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
  -days "$days" -extfile "$dir/ext" -out "$dir/tls.crt" 2>/dev/null
kubectl -n "$ns" create secret tls "$svc-tls" --cert="$dir/tls.crt" --key="$dir/tls.key" \
  --dry-run=client -o yaml | kubectl apply -f -
ca=$(base64 <"$dir/ca.crt" | tr -d '\n')
kubectl patch mutatingwebhookconfiguration gpuslice-scheduler-routing --type=json \
  -p "[{\"op\":\"replace\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"$ca\"}]"
