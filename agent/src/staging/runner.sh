# The in-container buildpack runner (spec §5.1), POSIX sh: the stack's rootfs may have
# nothing but a busybox (sh, cp, tar, gzip, du, sed, tee). The agent runs it as vcap with
# `sh -c <this text> runner <phase> <args...>`; everything it prints goes to the staging log
# (and, through the executor, to the agent's log).
#
#   build detect       - detect with every /tmp/buildpacks/NNN in order (first exit 0 wins)
#   build select NAME  - use the only buildpack in /tmp/buildpacks (NAME when detect is silent)
#   build git URL      - clone URL[#ref] into /tmp/buildpacks/custom and use it
#   package            - tar /tmp/staged into /tmp/droplet.tgz and /tmp/cache into
#                        /tmp/buildpack_cache.tgz (staging_info.yml written by the agent)
#
# build leaves its results in /tmp/result (detected_buildpack, buildpack_path, release.yml);
# on a staging error it writes /tmp/staged/staging_info.yml with `staging_error` and exits 1.

SRC=/tmp/unstaged
DEST=/tmp/staged
APP=$DEST/app
CACHE=/tmp/cache
BPS=/tmp/buildpacks
RESULT=/tmp/result
LOG=$DEST/logs/staging_task.log

size() {
  s=$(du -sh "$1" 2>/dev/null | cut -f1)
  printf '%s' "${s:-0}"
}

# A staging error the controller can show (staging_info.yml `staging_error`).
fail() {
  printf '%s: %s\n' "$1" "$2" >&2
  {
    printf 'staging_error:\n'
    printf '  type: %s\n' "$1"
    printf '  message: "%s"\n' "$2"
  } >"$DEST/staging_info.yml"
  return 1
}

# A buildpack dir without bin/ but with a single subdirectory holding bin/ (a GitHub zip).
bpdir() {
  d=$1
  if [ ! -d "$d/bin" ]; then
    set -- "$d"/*
    if [ $# -eq 1 ] && [ -d "$1/bin" ]; then d=$1; fi
  fi
  chmod u+x "$d"/bin/* 2>/dev/null
  printf '%s' "$d"
}

# First line of a buildpack's detect output, blanks trimmed.
detect() {
  out=$("$1/bin/detect" "$APP" </dev/null) || return 1
  printf '%s\n' "$out" | sed -n '1{s/^[[:space:]]*//;s/[[:space:]]*$//;p;}'
}

build() {
  mode=$1
  arg=$2
  mkdir -p "$APP" "$DEST/logs" "$DEST/tmp" "$RESULT" "$CACHE" || return 1
  echo "-----> Downloaded app package ($(size "$SRC"))"
  cp -a "$SRC/." "$APP/" || return 1
  chmod -R 0744 "$APP" 2>/dev/null
  chmod -R u+rwX "$APP" 2>/dev/null
  if [ -n "$(ls -A "$CACHE" 2>/dev/null)" ]; then
    echo "-----> Downloaded app buildpack cache ($(size "$CACHE"))"
  fi

  bp=
  name=
  case $mode in
  detect)
    for d in "$BPS"/*; do
      [ -d "$d" ] || continue
      d=$(bpdir "$d")
      if n=$(detect "$d"); then
        bp=$d
        name=${n:-$(basename "$d")}
        break
      fi
    done
    if [ -z "$bp" ]; then
      fail NoAppDetectedError "An application could not be detected by any available buildpack"
      return 1
    fi
    ;;
  select)
    for d in "$BPS"/*; do
      [ -d "$d" ] && bp=$(bpdir "$d") && break
    done
    if [ -z "$bp" ]; then
      fail BuildpackNotFound "The buildpack is empty"
      return 1
    fi
    name=$(detect "$bp")
    name=${name:-$arg}
    ;;
  git)
    url=${arg%%#*}
    ref=
    case $arg in *'#'*) ref=${arg#*#} ;; esac
    bp=$BPS/custom
    rm -rf "$bp"
    if [ -n "$ref" ]; then
      git clone --depth 1 -b "$ref" --recursive "$url" "$bp" ||
        { rm -rf "$bp" && git clone --recursive "$url" "$bp" && (cd "$bp" && git checkout "$ref"); }
    else
      git clone --depth 1 --recursive "$url" "$bp"
    fi || {
      fail BuildpackDownloadFailed "Failed to clone the buildpack from $url"
      return 1
    }
    bp=$(bpdir "$bp")
    name=$(detect "$bp")
    name=${name:-$(basename "$url" .git)}
    ;;
  *)
    echo "runner: unknown mode $mode" >&2
    return 2
    ;;
  esac

  "$bp/bin/compile" "$APP" "$CACHE" </dev/null || {
    fail BuildpackCompileFailed "Buildpack compilation step failed"
    return 1
  }
  "$bp/bin/release" "$APP" </dev/null >"$RESULT/release.yml" || {
    fail BuildpackReleaseFailed "Buildpack release step failed"
    return 1
  }
  printf '%s' "$name" >"$RESULT/detected_buildpack"
  printf '%s' "$bp" >"$RESULT/buildpack_path"
}

package() {
  (cd "$DEST" && tar -czf /tmp/droplet.tgz app logs tmp staging_info.yml) || return 1
  (cd "$CACHE" && tar -czf /tmp/buildpack_cache.tgz .) || return 1
  echo "-----> Uploading droplet ($(size /tmp/droplet.tgz))"
}

phase=$1
shift
mkdir -p "$DEST/logs" "$RESULT" || exit 1
status=$RESULT/status.$phase
case $phase in
build | package) ;;
*)
  echo "runner: unknown phase $phase" >&2
  exit 2
  ;;
esac
{
  "$phase" "$@"
  echo $? >"$status"
} 2>&1 | tee -a "$LOG"
read -r code <"$status" 2>/dev/null || code=1
exit "$code"
