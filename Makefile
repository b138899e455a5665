# postern: each target is one step a person would type.
PREFIX ?= /usr/local
DESTDIR ?=
CARGO ?= cargo
# postern-smtpd, postern-deliver and postern-queue are one program, postern, run under those
# names (links to it); postern-sendmail, which may be setgid, is a small program of its own.
BINARIES = postern postern-sendmail
LINKED = postern-smtpd postern-deliver postern-queue
# Where other programs look for sendmail, whatever PREFIX is: cron, mail(1) and PHP call
# /usr/sbin/sendmail; mailq and newaliases are found on PATH.
SENDMAIL_DIR ?= /usr/sbin
MAILQ_DIR ?= /usr/bin

.PHONY: all build links run test test-deps lint fuzz bench install install-files uninstall deb deb-files clean

all: build

build:
	$(CARGO) build --release
	@$(MAKE) --no-print-directory links

# The three names of postern beside it, as install makes them.
links:
	@for p in $(LINKED); do ln -sfn postern target/release/$$p; done

# The embedded default: 127.0.0.1:2525, spool in ./spool, no root, no system config.
run: build
	./target/release/postern-smtpd --builtin-config

# Installs what the interop tests talk to (swaks, Postfix's smtp-source), then lints and tests.
# The test build honours the crash points of src/fault.rs; `build` and `install` never do.
TEST_FEATURES = --features fault-injection
# Then each fuzz target runs for a few seconds, so a crash found that quickly fails CI.
test: test-deps lint
	$(CARGO) test --release --all-targets $(TEST_FEATURES)
	tools/fuzz $(FUZZ_SMOKE_SECONDS)

FUZZ_SMOKE_SECONDS ?= 4
# Fuzzing proper (stable toolchain, libFuzzer): FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 300
fuzz:
	tools/fuzz $(FUZZ_SECONDS)

test-deps:
	@tools/ensure-test-deps

lint:
	$(CARGO) fmt --check
	$(CARGO) fmt --check --manifest-path fuzz/Cargo.toml
	$(CARGO) clippy --release --all-targets $(TEST_FEATURES) -- -D warnings

# Acceptance rate beside a private Postfix and the disk's durable-create rate; idle memory.
bench: test-deps
	$(CARGO) build --release --bins --examples
	tools/bench

install: build install-files

# Copies what `build` made; BUILD_DIR lets the tests install a build from elsewhere.
BUILD_DIR ?= target/release
install-files:
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)/etc/postern
	for b in $(BINARIES); do install -m 0755 $(BUILD_DIR)/$$b $(DESTDIR)$(PREFIX)/sbin/$$b; done
	for p in $(LINKED); do ln -sfn postern $(DESTDIR)$(PREFIX)/sbin/$$p; done
	@# sendmail, mailq and newaliases: made, or left alone when another MTA's are there.
	install -d $(DESTDIR)$(SENDMAIL_DIR) $(DESTDIR)$(MAILQ_DIR)
	for l in $(SENDMAIL_DIR)/sendmail $(MAILQ_DIR)/mailq $(MAILQ_DIR)/newaliases; do \
		if [ -e $(DESTDIR)$$l ] && [ "$$(readlink $(DESTDIR)$$l)" != $(PREFIX)/sbin/postern-sendmail ]; then \
			echo "make install: leaving $$l, another MTA's; remove that MTA, then run make install again"; \
		else ln -sf $(PREFIX)/sbin/postern-sendmail $(DESTDIR)$$l; fi; \
	done
	test -e $(DESTDIR)/etc/postern/postern.conf || install -m 0644 postern.conf.example $(DESTDIR)/etc/postern/postern.conf
	@# Delivery runs from cron where there is no systemd (the line does nothing under systemd).
	install -d $(DESTDIR)/etc/cron.d
	test -e $(DESTDIR)/etc/cron.d/postern || sed 's#@SBINDIR@#$(PREFIX)/sbin#' contrib/cron.d/postern > $(DESTDIR)/etc/cron.d/postern
	chmod 0644 $(DESTDIR)/etc/cron.d/postern
	@# Crossed by everyone to reach maildrop/; each queue directory in it is the service's, 0700.
	install -d -m 0755 $(DESTDIR)/var/spool/postern
	install -d $(DESTDIR)$(PREFIX)/share/man/man8 $(DESTDIR)$(PREFIX)/share/man/man5
	install -m 0644 doc/*.8 $(DESTDIR)$(PREFIX)/share/man/man8/
	install -m 0644 doc/*.5 $(DESTDIR)$(PREFIX)/share/man/man5/
	install -d $(DESTDIR)$(PREFIX)/lib/systemd/system
	for u in contrib/systemd/*; do \
		sed 's#@SBINDIR@#$(PREFIX)/sbin#' $$u > $(DESTDIR)$(PREFIX)/lib/systemd/system/$$(basename $$u); \
	done

# Removes what install-files put in place, except the configuration and the spool (mail
# may still be queued there), and says so.
uninstall:
	for b in $(BINARIES) $(LINKED); do rm -f $(DESTDIR)$(PREFIX)/sbin/$$b; done
	for l in $(SENDMAIL_DIR)/sendmail $(MAILQ_DIR)/mailq $(MAILQ_DIR)/newaliases; do \
		if [ "$$(readlink $(DESTDIR)$$l)" = $(PREFIX)/sbin/postern-sendmail ]; then rm -f $(DESTDIR)$$l; fi; \
	done
	for m in doc/*.8; do rm -f $(DESTDIR)$(PREFIX)/share/man/man8/$$(basename $$m); done
	for m in doc/*.5; do rm -f $(DESTDIR)$(PREFIX)/share/man/man5/$$(basename $$m); done
	for u in contrib/systemd/*; do rm -f $(DESTDIR)$(PREFIX)/lib/systemd/system/$$(basename $$u); done
	rm -f $(DESTDIR)/etc/cron.d/postern
	@echo "make uninstall: left /etc/postern and /var/spool/postern (the configuration, and any mail still queued)"

# A Debian package (target/postern_VERSION_ARCH.deb) that provides mail-transport-agent, so
# bsd-mailx and cron find their MTA in it; its postinst runs `postern-queue init`, sets
# postern-sendmail setgid with dpkg-statoverride and enables the units, and a purge removes
# what it made (contrib/debian/).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEB_ROOT ?= target/deb/root
DEB_OUT ?= target
deb: build deb-files

# Who the package names as its maintainer: the person or team that builds and ships it.
DEB_MAINTAINER ?= postern developers <postern@example.org>
DEB_DOC = $(DEB_ROOT)/usr/share/doc/postern
DEB_MAN = $(DEB_ROOT)/usr/share/man

# As Debian policy asks: the manual pages compressed, each command with a page (sendmail,
# mailq and newaliases share postern-sendmail's, postern its own), links relative, a
# copyright file and a changelog, and the md5sums of every file but the conffiles.
deb-files:
	rm -rf $(DEB_ROOT)
	$(MAKE) install-files DESTDIR=$(abspath $(DEB_ROOT)) PREFIX=/usr
	ln -sfn postern-sendmail $(DEB_ROOT)/usr/sbin/sendmail
	for l in mailq newaliases; do ln -sfn ../sbin/postern-sendmail $(DEB_ROOT)/usr/bin/$$l; done
	gzip -9n $(DEB_MAN)/man5/*.5 $(DEB_MAN)/man8/*.8
	install -d $(DEB_MAN)/man1
	ln -sfn postern-sendmail.8.gz $(DEB_MAN)/man8/sendmail.8.gz
	for l in mailq newaliases; do ln -sfn ../man8/postern-sendmail.8.gz $(DEB_MAN)/man1/$$l.1.gz; done
	install -d $(DEB_DOC)
	install -m 0644 contrib/debian/copyright $(DEB_DOC)/copyright
	sed 's/@VERSION@/$(VERSION)/; s/@MAINTAINER@/$(DEB_MAINTAINER)/; s/@DATE@/'"$$(date -R)"'/' \
		contrib/debian/changelog.in | gzip -9n > $(DEB_DOC)/changelog.gz
	install -d $(DEB_ROOT)/DEBIAN
	sed 's/@VERSION@/$(VERSION)/; s/@ARCH@/$(ARCH)/; s/@MAINTAINER@/$(DEB_MAINTAINER)/' \
		contrib/debian/control.in > $(DEB_ROOT)/DEBIAN/control
	printf '/etc/postern/postern.conf\n/etc/cron.d/postern\n' > $(DEB_ROOT)/DEBIAN/conffiles
	for s in postinst prerm postrm; do install -m 0755 contrib/debian/$$s $(DEB_ROOT)/DEBIAN/$$s; done
	cd $(DEB_ROOT) && find usr -type f -printf '%P\n' | sort | sed 's#^#usr/#' | xargs md5sum > DEBIAN/md5sums
	dpkg-deb --root-owner-group --build $(DEB_ROOT) $(DEB_OUT)/postern_$(VERSION)_$(ARCH).deb

clean:
	$(CARGO) clean
	rm -rf spool/tmp spool/new spool/cur spool/hold spool/spare spool/mailboxes
