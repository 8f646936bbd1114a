#!/usr/bin/env python3
"""The admin console in a real browser: headless Chromium (Debian's chromium and
chromium-driver) driven by Selenium against a running service.

    tests/browser/console_test.py BASE_URL ADMIN_KEY [SCREENSHOT_DIR]

It refuses a wrong key with a message, signs in, creates a sale from the page, buys through
the API and waits for `sold` to change on the page without a reload (at most 2 s), opens
the sale, runs the audit and waits for PASS, creates a sale with variants and watches one
variant's counters change live, opens a raffle and sees its draw (entries open with its
entrants, then drawn with the selected and the seed), signs out and checks the key is gone.
With a SCREENSHOT_DIR it saves the console at 1280 px and at phone width. Exits non-zero on
the first failure.
"""

import json
import sys
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

BASE, KEY = sys.argv[1].rstrip("/"), sys.argv[2]
SHOTS = sys.argv[3] if len(sys.argv) > 3 else None


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    # As root on a closed network: no sandbox, and no background calls home.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def post(path, body, expected, admin=False):
    headers = {"Content-Type": "application/json"}
    if admin:
        headers["Authorization"] = f"Bearer {KEY}"
    request = urllib.request.Request(
        f"{BASE}{path}", method="POST", data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == expected, response.status


def buy(sku, user, variant=None):
    body = {"userId": user} if variant is None else {"userId": user, "variant": variant}
    post(f"/api/v1/sales/{sku}/purchases", body, 201)


def raffle_field(driver, name):
    return driver.find_element(By.CSS_SELECTOR, f'#raffle-panel [data-raffle="{name}"]').text


def open_sale(driver, sku):
    # Rows are updated in place; should the list be rebuilt (a sale added elsewhere)
    # between finding the row and clicking it, find it again.
    WebDriverWait(driver, 10, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: d.find_element(By.CSS_SELECTOR, f'#sales-body tr[data-sale="{sku}"]').click() or True)


def field(driver, sku, name):
    return driver.find_element(By.CSS_SELECTOR, f'[data-sale="{sku}"] [data-field="{name}"]').text


def step(text):
    print(f"[console-test] {text}", flush=True)


def main():
    driver = browser()
    wait = WebDriverWait(driver, 10)
    try:
        driver.get(f"{BASE}/console")
        step("a wrong key is refused with a message")
        wait.until(ec.visibility_of_element_located((By.ID, "admin-key"))).send_keys("wrong-key")
        driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "message"), "Wrong admin key"))

        step("signs in")
        key_input = driver.find_element(By.ID, "admin-key")
        key_input.clear()
        key_input.send_keys(KEY)
        driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
        wait.until(ec.visibility_of_element_located((By.ID, "sales")))
        assert KEY not in driver.current_url, "the key never goes into a URL"

        step("creates a sale from the page")
        sku = f"console-{uuid.uuid4().hex[:8]}"
        driver.find_element(By.ID, "show-create").click()
        form = driver.find_element(By.ID, "create-form")
        form.find_element(By.NAME, "sku").send_keys(sku)
        form.find_element(By.NAME, "name").send_keys("Console drop")
        stock = form.find_element(By.NAME, "stock")
        stock.clear()
        stock.send_keys("25")
        Select(form.find_element(By.NAME, "checkout")).select_by_value("instant")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(ec.presence_of_element_located(
            (By.CSS_SELECTOR, f'[data-sale="{sku}"] [data-field="sold"]')))
        assert field(driver, sku, "sold") == "0", field(driver, sku, "sold")
        assert field(driver, sku, "available") == "25"

        step("buys through the API; the page shows it without a reload")
        marker = driver.execute_script("window.__notReloaded = true; return 1;")
        buy(sku, "browser-buyer-1")
        bought = time.monotonic()
        WebDriverWait(driver, 2, poll_frequency=0.05).until(
            lambda d: field(d, sku, "sold") == "1")
        seen = time.monotonic() - bought
        assert driver.execute_script("return window.__notReloaded === true") and marker == 1
        assert field(driver, sku, "available") == "24"
        step(f"sold changed on the page {seen * 1000:.0f} ms after the purchase answered")

        step("opens the sale, buys a few more, runs the audit")
        open_sale(driver, sku)
        wait.until(ec.visibility_of_element_located((By.ID, "detail")))
        assert not driver.find_element(By.ID, "raffle-panel").is_displayed()
        # A few seconds of buying, so the chart has something to show.
        for n in range(2, 21):
            buy(sku, f"browser-buyer-{n}")
            time.sleep(0.05 * (n % 7))
        wait.until(lambda d: d.find_element(
            By.CSS_SELECTOR, '#detail-counters [data-field="sold"]').text == "20")
        driver.find_element(By.ID, "run-audit").click()
        wait.until(lambda d: d.find_element(By.ID, "audit-result").get_attribute("data-result"))
        verdict = driver.find_element(By.ID, "audit-result").get_attribute("data-result")
        assert verdict == "PASS", verdict
        checks = driver.find_elements(By.CSS_SELECTOR, "#audit-result tr[data-check]")
        assert len(checks) >= 5, len(checks)
        time.sleep(1.5)  # let the chart draw a few samples

        if SHOTS:
            driver.set_window_size(1280, 1700)
            driver.execute_script("window.scrollTo(0, 0)")
            time.sleep(0.5)
            driver.save_screenshot(f"{SHOTS}/console.png")
            driver.set_window_size(390, 1400)
            time.sleep(0.5)
            driver.save_screenshot(f"{SHOTS}/console-phone.png")
            driver.set_window_size(1280, 1000)
            step(f"screenshots in {SHOTS}")

        step("creates a sale with variants from the form; each variant's counters update live")
        variant_sku = f"console-var-{uuid.uuid4().hex[:8]}"
        driver.find_element(By.ID, "show-create").click()
        form = driver.find_element(By.ID, "create-form")
        form.find_element(By.NAME, "sku").send_keys(variant_sku)
        form.find_element(By.NAME, "name").send_keys("Sizes drop")
        Select(form.find_element(By.NAME, "checkout")).select_by_value("instant")
        form.find_element(By.NAME, "variants").send_keys("S:3, M:4")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "detail-sku"), variant_sku))
        variant_cell = '#variants-body tr[data-variant="{}"] td:nth-child({})'
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, variant_cell.format("M", 2)).text == "4")
        assert driver.find_element(
            By.CSS_SELECTOR, '#detail-counters [data-field="stock"]').text == "7"
        buy(variant_sku, "browser-variant-buyer", "M")
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, variant_cell.format("M", 3)).text == "1")
        assert driver.find_element(By.CSS_SELECTOR, variant_cell.format("S", 3)).text == "0"

        step("a raffle: entries open with its entrants, then drawn with the selected and the seed")
        draw = f"console-draw-{uuid.uuid4().hex[:8]}"
        ends = (datetime.now(timezone.utc) + timedelta(seconds=8)).isoformat()
        post("/api/v1/admin/sales", {"sku": draw, "name": "Console draw", "stock": 2,
                                     "checkout": "raffle", "endsAt": ends}, 201, admin=True)
        for n in range(3):
            post(f"/api/v1/sales/{draw}/entries", {"userId": f"entrant-{n}"}, 202)
        open_sale(driver, draw)
        wait.until(lambda d: raffle_field(d, "entrants") == "3")
        assert raffle_field(driver, "state") == "entries open", raffle_field(driver, "state")
        assert "once the draw begins" in raffle_field(driver, "seed")
        # The draw runs at endsAt (the job runner); the panel follows the raffle's events.
        WebDriverWait(driver, 25).until(lambda d: raffle_field(d, "selected") == "2")
        wait.until(lambda d: raffle_field(d, "state") == "drawn")
        assert raffle_field(driver, "entered") == "1", raffle_field(driver, "entered")
        assert raffle_field(driver, "seed").startswith("draw seed "), raffle_field(driver, "seed")
        assert raffle_field(driver, "ranked") == "3 entrants ranked", raffle_field(driver, "ranked")

        step("signs out: the key is gone from the tab")
        driver.find_element(By.ID, "sign-out").click()
        wait.until(ec.visibility_of_element_located((By.ID, "sign-in")))
        stored = driver.execute_script("return sessionStorage.getItem('flashsale.adminKey')")
        assert stored is None, stored
        step("PASS")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
