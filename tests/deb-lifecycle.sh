#!/bin/sh
# The Debian package's life on a box, in a throwaway root: installed, upgraded, removed and
# purged twice (with mail still queued, then with none). The root is the host's own, seen
# through an overlay whose writes go to a tmpfs of a mount namespace of this script's
# (unshare -m), so nothing of the host is written, and all of it is gone when it ends.
#
#   tests/deb-lifecycle.sh PACKAGE.deb SCRATCH-DIR
#
# Prints `step: what: value` lines, which the test (tests/operations.rs) checks; exits 77
# when this machine cannot make the root.
set -eu

if [ "${1:-}" = --inside ]; then
  # In the throwaway root. No service of the host's is started or stopped: service actions
  # are refused (policy-rc.d), and systemctl and deb-systemd-invoke write down what they are
  # asked, as if systemd ran here; systemctl still does what works without a running
  # systemd (`--root=/ preset`, which makes the links of an enabled unit).
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  mkdir -p /run/systemd/system
  real=none
  if [ -x /usr/bin/systemctl ]; then
    mv /usr/bin/systemctl /usr/bin/systemctl.real
    real=/usr/bin/systemctl.real
  fi
  printf '#!/bin/sh\necho "systemctl $*" >> /tmp/calls\ncase "$1" in --root=*) [ -x %s ] && exec %s "$@";; esac\n' \
    "$real" "$real" > /usr/bin/systemctl
  printf '#!/bin/sh\necho "deb-systemd-invoke $*" >> /tmp/calls\n' > /usr/bin/deb-systemd-invoke
  chmod 755 /usr/bin/systemctl /usr/bin/deb-systemd-invoke
  # Another MTA goes first, as apt removes it for the Conflicts.
  for other in $(dpkg-query -W -f '${Package} ${Provides}\n' | awk '/mail-transport-agent/ { print $1 }'); do
    dpkg --remove --force-depends "$other" > /dev/null 2>&1
  done
  rm -f /tmp/calls

  state() {
    step=$1
    echo "$step: user: $(getent passwd postern | cut -d: -f1,6)"
    echo "$step: groups: $(getent group postern postern-drop | cut -d: -f1 | tr '\n' ' ')"
    echo "$step: override: $(dpkg-statoverride --list /usr/sbin/postern-sendmail || true)"
    echo "$step: sendmail: $(stat -c '%a %U %G' /usr/sbin/postern-sendmail 2>/dev/null || echo none)"
    echo "$step: maildrop: $(stat -c '%a %U %G' /var/spool/postern/maildrop 2>/dev/null || echo none)"
    for dir in /var/spool/postern /etc/postern; do
      if [ -d "$dir" ]; then echo "$step: $dir: $(ls -A "$dir" | tr '\n' ' ')"; else echo "$step: $dir: none"; fi
    done
    for link in multi-user.target.wants/postern-smtpd.service timers.target.wants/postern-deliver.timer; do
      if [ -L "/etc/systemd/system/$link" ]; then echo "$step: enabled: ${link##*/}"; fi
    done
    if [ -e /tmp/calls ]; then
      sed "s/^/$step: called: /" /tmp/calls
      rm /tmp/calls
    fi
  }

  dpkg -i /tmp/postern.deb > /tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; exit 1; }
  state installed
  # The administrator turns the timer off (cron runs the deliveries; what systemctl disable
  # does): an upgrade keeps it so.
  rm /etc/systemd/system/timers.target.wants/postern-deliver.timer
  dpkg -i /tmp/postern.deb > /tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; exit 1; }
  state upgraded
  dpkg --remove --force-depends postern > /tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; exit 1; }
  state removed
  : > /var/spool/postern/new/0001234567890ABCDEF0123
  dpkg --purge --force-depends postern > /tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; exit 1; }
  sed 's/^/purged-with-mail: said: /' /tmp/dpkg.log | grep 'queued file'
  state purged-with-mail
  rm /var/spool/postern/new/0001234567890ABCDEF0123
  dpkg -i /tmp/postern.deb > /tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; exit 1; }
  dpkg --purge --force-depends postern > /tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; exit 1; }
  state purged
  echo "done"
  exit 0
fi

deb=$1
scratch=$2
if [ "${IN_THROWAWAY_ROOT:-}" != 1 ]; then
  exec env IN_THROWAWAY_ROOT=1 unshare --mount --pid --fork --propagation private sh "$0" "$@"
fi
# Exit 77: this machine cannot make such a root (the test says it skipped).
mount -t tmpfs throwaway "$scratch" || { echo "skip: cannot mount a tmpfs here"; exit 77; }
mkdir "$scratch/upper" "$scratch/work" "$scratch/root"
root=$scratch/root
mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" "$root" ||
  { echo "skip: cannot mount an overlay of / here"; exit 77; }
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t tmpfs run "$root/run"
mount -t tmpfs tmp "$root/tmp"
cp "$deb" "$root/tmp/postern.deb"
cp "$0" "$root/tmp/lifecycle.sh"
exec chroot "$root" sh /tmp/lifecycle.sh --inside
